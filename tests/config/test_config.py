"""The config loader on its own: TOML in, frozen dataclasses or a ConfigError out.

Every error must name the file, the dotted key path and the problem; no file named by the
config is opened here (that is ``siptap check``, see test_check.py).
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from siptap.addresses import Endpoint
from siptap.config import (
    DEFAULT_SIP_TLS_PORT,
    HEP_COLLECTOR_PORT,
    RSA_KEX_CIPHERS,
    Config,
    ServerTlsSettings,
    load_config,
    parse_config,
)
from siptap.errors import ConfigError

SHIPPED = Path(__file__).resolve().parents[2] / "config.toml"
FILE = Path("/etc/siptap/lab.toml")


def config_text(*, top: str = "", route: str = "", customer: str = "", core: str = "",
                core_tls: str = "", limits: str = "", extra: str = "",
                listen: str = '"127.0.0.1:5061"', core_address: str = '"127.0.0.1:5062"') -> str:
    """A minimal valid config; each argument adds lines inside that table."""
    return f"""
{top}
[[route]]
name = "lab"
listen = {listen}
{route}

[route.customer]
cert = "certs/proxy-server.pem"
key = "certs/proxy-server.key"
client_ca = "certs/ca.pem"
{customer}

[[route.core]]
address = {core_address}
{core}

[route.core_tls]
cert = "certs/proxy-client.pem"
key = "certs/proxy-client.key"
ca = "certs/ca.pem"
{core_tls}

[route.limits]
{limits}

{extra}
"""


def parse(text: str, path: Path = FILE) -> Config:
    return parse_config(tomllib.loads(text), path)


def error(text: str, path: Path = FILE) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text, path)
    exc = info.value
    assert exc.file == str(path)
    assert str(exc).startswith(f"{path}: ")
    assert "\n" not in str(exc)
    return exc


def assert_error(text: str, key: str, *fragments: str) -> ConfigError:
    exc = error(text)
    assert exc.key == key, str(exc)
    # A key inside a route names that route too (when it has a name to give).
    named = f" (route {exc.route!r})" if exc.route is not None else ""
    assert str(exc).startswith(f"{FILE}: {key}{named}: "), str(exc)
    for fragment in fragments:
        assert fragment in exc.problem, str(exc)
    return exc


# -- the shipped file ---------------------------------------------------------------------


def test_shipped_config_parses_with_paths_against_its_folder() -> None:
    config = load_config(SHIPPED)
    folder = SHIPPED.parent
    assert config.path == SHIPPED
    assert config.drain_timeout == 30.0
    (route,) = config.routes
    assert route.name == "lab"
    assert route.listen == (Endpoint("127.0.0.1", 5061),)
    (core,) = route.cores
    assert core.address == Endpoint("127.0.0.1", 5062)
    assert core.server_name == "localhost"
    assert route.customer.cert == folder / "certs/proxy-server.pem"
    assert route.customer.key == folder / "certs/proxy-server.key"
    assert route.customer.client_ca == folder / "certs/ca.pem"
    assert route.customer.key_exchange == "rsa"
    assert route.customer.effective_ciphers == RSA_KEX_CIPHERS
    assert route.customer.effective_max_version == "TLSv1.2"
    assert route.core_tls.cert == folder / "certs/proxy-client.pem"
    assert route.core_tls.ca == folder / "certs/ca.pem"
    assert (route.core_tls.min_version, route.core_tls.max_version) == ("TLSv1.2", "TLSv1.3")
    assert route.reverse is None
    assert route.limits.idle_timeout == 0.0
    assert route.limits.max_sip_message == 65536
    assert (config.log.format, config.log.level, config.log.key_material) == ("json", "info", True)

    mirror = config.mirror
    assert mirror.legs == "customer"
    assert mirror.mirror_legs == frozenset({"customer"})
    (hep,) = mirror.hep
    assert hep.address == Endpoint("127.0.0.1", 9060)
    assert (hep.transport, hep.capture_id) == ("udp", 2001)
    (jsonl,) = mirror.jsonl
    assert (jsonl.transport, jsonl.path, jsonl.address) == ("unix", folder / "captures/mirror.sock", None)
    assert mirror.keylog is not None and mirror.keylog.path == folder / "captures/keys.log"
    assert mirror.pcap is not None
    assert (mirror.pcap.directory, mirror.pcap.format) == (folder / "captures", "pcap")
    assert (mirror.pcap.rotate_bytes, mirror.pcap.rotate_seconds) == (104857600, 3600.0)
    assert mirror.srtp_keys is not None and mirror.srtp_keys.path == folder / "captures/srtp-keys.log"


def test_config_is_frozen() -> None:
    config = parse(config_text())
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.routes[0].customer.cert = Path("/x")  # type: ignore[misc]  # the point: a frozen dataclass refuses this


def test_minimal_config_defaults() -> None:
    config = parse(config_text())
    route = config.routes[0]
    assert route.customer.verify_client is True
    assert route.customer.allow == ()
    assert route.cores[0].server_name is None
    assert route.limits.handshake_timeout == 10.0
    assert config.mirror.enabled is False


def test_absolute_and_home_paths() -> None:
    config = parse(config_text().replace('"certs/ca.pem"', '"/opt/pki/ca.pem"', 1))
    assert config.routes[0].customer.client_ca == Path("/opt/pki/ca.pem")
    assert config.routes[0].core_tls.ca == FILE.parent / "certs/ca.pem"
    config = parse(config_text().replace('"certs/ca.pem"', '"~/ca.pem"', 1))
    assert config.routes[0].customer.client_ca == Path.home() / "ca.pem"


# -- unknown keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (config_text(top="colour = 1"), "colour"),
        (config_text(top='path = "/x"'), "path"),  # Config.path is internal, never from the file
        (config_text(route="liste = 1"), "route[0].liste"),
        (config_text(customer="verify_clients = true"), "route[0].customer.verify_clients"),
        (config_text(core="port = 5062"), "route[0].core[0].port"),
        (config_text(core_tls="sni = true"), "route[0].core_tls.sni"),
        (config_text(limits="timeout = 1"), "route[0].limits.timeout"),
        (config_text(extra='[log]\nformats = "json"'), "log.formats"),
        (config_text(extra='[[mirror.hep]]\naddress = "127.0.0.1:9060"\nport = 9060'), "mirror.hep[0].port"),
        (config_text(extra='[mirror.pcap]\ndirectory = "c"\nrotate = 1'), "mirror.pcap.rotate"),
    ],
)
def test_unknown_key(text: str, key: str) -> None:
    assert_error(text, key, "unknown key")


def test_unknown_key_lists_the_known_ones() -> None:
    exc = assert_error(config_text(customer="verify_clients = true"), "route[0].customer.verify_clients")
    assert "verify_client," in exc.problem and "key_exchange" in exc.problem


def test_unknown_key_in_second_route() -> None:
    second = config_text(listen='"127.0.0.1:5071"', customer="bogus = 1").split("[[route]]", 1)[1]
    exc = assert_error(config_text() + "[[route]]" + second.replace('name = "lab"', 'name = "two"'),
                       "route[1].customer.bogus", "unknown key")
    # The route by its name as well as its index: the name is what a user searches the file for.
    assert exc.route == "two"
    assert str(exc).startswith(f"{FILE}: route[1].customer.bogus (route 'two'): unknown key")


@pytest.mark.parametrize(("text", "key", "suggestion"), [
    (config_text(route="liste = 1"), "route[0].liste", "did you mean 'listen'?"),
    (config_text(customer="verify_clients = true"), "route[0].customer.verify_clients", "did you mean 'verify_client'?"),
    (config_text(customer='Key_Exchange = "rsa"'), "route[0].customer.Key_Exchange", "did you mean 'key_exchange'?"),
    (config_text(top="[log]\nsip_payload = true"), "log.sip_payload", "did you mean 'sip_payloads'?"),
    (config_text(top="[mirrors]"), "mirrors", "did you mean 'mirror'?"),
    (config_text(customer='key_exchange = "RSA"'), "route[0].customer.key_exchange", "did you mean 'rsa'?"),
    (config_text(core_tls='min_version = "TLS1.2"'), "route[0].core_tls.min_version", "did you mean 'TLSv1.2'?"),
])
def test_misspelt_key_or_value_suggests_the_nearest(text: str, key: str, suggestion: str) -> None:
    exc = assert_error(text, key, suggestion)
    assert "did you mean" in str(exc) and str(exc).count("did you mean") == 1


@pytest.mark.parametrize(("text", "key"), [
    (config_text(route='colour = "red"'), "route[0].colour"),
    (config_text(customer='key_exchange = "dh"'), "route[0].customer.key_exchange"),
])
def test_no_suggestion_when_nothing_is_close(text: str, key: str) -> None:
    assert "did you mean" not in str(assert_error(text, key))


def test_a_route_without_a_usable_name_is_named_by_index_only() -> None:
    exc = assert_error(config_text(route="name = 5").replace('name = "lab"\n', ""), "route[0].name", "expected a string")
    assert exc.route is None and f"{FILE}: route[0].name: " in str(exc)


# -- wrong types ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        (config_text(customer='verify_depth = "4"'), "route[0].customer.verify_depth", "expected an integer, got a string"),
        (config_text(limits="max_connections = 1.5"), "route[0].limits.max_connections", "expected an integer, got a number"),
        (config_text(limits="max_connections = true"), "route[0].limits.max_connections", "expected an integer, got a boolean"),
        (config_text(customer="verify_client = 1"), "route[0].customer.verify_client", "expected true or false, got an integer"),
        (config_text(core_tls='verify = "yes"'), "route[0].core_tls.verify", "expected true or false, got a string"),
        (config_text(limits='handshake_timeout = "10"'), "route[0].limits.handshake_timeout", "expected a number of seconds"),
        (config_text(top="drain_timeout = false"), "drain_timeout", "expected a number of seconds, got a boolean"),
        (config_text(route="name = 5").replace('name = "lab"\n', ""), "route[0].name", "expected a string, got an integer"),
        (config_text(customer='allow = "cn:x"'), "route[0].customer.allow", "expected a list, got a string"),
        (config_text(customer="cert = 1").replace('cert = "certs/proxy-server.pem"\n', ""),
         "route[0].customer.cert", "expected a file path (string), got an integer"),
        (config_text(top='log = ["json"]'), "log", "expected a table, got a list"),
        (config_text(top='mirror = "off"'), "mirror", "expected a table, got a string"),
        (config_text(extra='[[mirror.keylog]]\npath = "k"'), "mirror.keylog", "expected a table, got a list"),
        (config_text(extra="[mirror]\nhep = 5"), "mirror.hep", "expected a list, got an integer"),
        (config_text(listen="5061"), "route[0].listen", "expected a list, got an integer"),
        (config_text(listen="[5061]"), "route[0].listen[0]", 'expected "host:port", got an integer'),
    ],
)
def test_wrong_type(text: str, key: str, problem: str) -> None:
    assert_error(text, key, problem)


def test_list_for_table() -> None:
    text = 'route = ["lab"]\n'
    assert_error(text, "route[0]", "expected a table, got a string")
    assert_error('[route]\nname = "lab"\n', "route", "expected a list, got a table")


# -- missing keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("drop", "key"),
    [
        ('cert = "certs/proxy-server.pem"\n', "route[0].customer.cert"),
        ('key = "certs/proxy-server.key"\n', "route[0].customer.key"),
        ('client_ca = "certs/ca.pem"\n', "route[0].customer.client_ca"),
        ('name = "lab"\n', "route[0].name"),
        ('listen = "127.0.0.1:5061"\n', "route[0].listen"),
        ('address = "127.0.0.1:5062"\n', "route[0].core[0].address"),
    ],
)
def test_missing_required_key(drop: str, key: str) -> None:
    assert_error(config_text().replace(drop, "", 1), key, "missing (required)")


def test_missing_sections() -> None:
    assert_error(config_text().split("[[route.core]]")[0], "route[0].core", "missing (required)")
    assert_error("", "route", "missing (required)")
    assert_error("route = []\n", "route", "at least one [[route]]")


# -- choices and cross-field checks ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        (config_text(customer='key_exchange = "dh"'), "route[0].customer.key_exchange", "'dh' is not one of rsa, any"),
        (config_text(customer='min_version = "SSLv3"'), "route[0].customer.min_version", "'SSLv3' is not one of TLSv1,"),
        (config_text(core_tls='max_version = "TLSv1.4"'), "route[0].core_tls.max_version", "'TLSv1.4' is not one of"),
        (config_text(extra='[log]\nlevel = "trace"'), "log.level", "'trace' is not one of debug, info, warning, error"),
        (config_text(extra='[mirror]\nlegs = "all"'), "mirror.legs", "'all' is not one of customer, core, both"),
        (config_text(extra='[[mirror.hep]]\naddress = "h:9060"\ntransport = "sctp"'), "mirror.hep[0].transport", "'sctp'"),
    ],
)
def test_invalid_choice(text: str, key: str, problem: str) -> None:
    assert_error(text, key, problem)


def test_min_version_above_max_version() -> None:
    assert_error(config_text(core_tls='min_version = "TLSv1.3"\nmax_version = "TLSv1.2"'),
                 "route[0].core_tls.min_version", "min_version is above max_version")
    assert_error(config_text(customer='key_exchange = "any"\nmin_version = "TLSv1.3"\nmax_version = "TLSv1.2"'),
                 "route[0].customer.min_version", "min_version is above max_version")


def test_rsa_key_exchange_with_tls13_minimum() -> None:
    assert_error(config_text(customer='min_version = "TLSv1.3"'),
                 "route[0].customer.min_version", "RSA key exchange needs TLS 1.2")
    # key_exchange = "any" admits TLS 1.3 only
    route = parse(config_text(customer='key_exchange = "any"\nmin_version = "TLSv1.3"\nmax_version = "TLSv1.3"')).routes[0]
    assert route.customer.effective_max_version == "TLSv1.3"


def test_key_exchange_any_defaults_to_tls13() -> None:
    # README and config.toml: "any" admits TLS 1.3 customers; max_version caps it only when set.
    any_default = parse(config_text(customer='key_exchange = "any"')).routes[0].customer
    assert any_default.effective_max_version == "TLSv1.3"
    capped = parse(config_text(customer='key_exchange = "any"\nmax_version = "TLSv1.2"')).routes[0].customer
    assert capped.effective_max_version == "TLSv1.2"
    # min_version checks against the effective ceiling, not an unset max_version.
    assert_error(config_text(customer='key_exchange = "any"\nmax_version = "TLSv1.1"\nmin_version = "TLSv1.2"'),
                 "route[0].customer.min_version", "min_version is above max_version")


def test_rsa_key_exchange_caps_max_version() -> None:
    customer = parse(config_text(customer='max_version = "TLSv1.3"')).routes[0].customer
    assert isinstance(customer, ServerTlsSettings)
    assert customer.effective_max_version == "TLSv1.2"


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("esbc1", "expected cn:NAME, san:NAME, sha256:HEX or issuer:DN"),
        ("cn:", "expected cn:NAME, san:NAME, sha256:HEX or issuer:DN"),
        ("ip:10.0.0.1", "unknown kind 'ip'"),
        ("sha256:ABCD", "needs 64 hex digits"),
    ],
)
def test_allow_list_bad_entry(entry: str, problem: str) -> None:
    exc = assert_error(config_text(customer=f'allow = ["cn:ok", "{entry}"]'), "route[0].customer.allow", problem)
    assert repr(entry) in exc.problem


def test_allow_list_good_entries() -> None:
    fp = ":".join(["AB"] * 32)
    customer = parse(config_text(customer=f'allow = ["cn:esbc1", "san:DNS:esbc1", "sha256:{fp}"]')).routes[0].customer
    assert customer.allow == ("cn:esbc1", "san:DNS:esbc1", f"sha256:{fp}")


def test_allow_list_entries_must_be_strings() -> None:
    assert_error(config_text(customer="allow = [1]"), "route[0].customer.allow[0]", "expected a string, got an integer")


def test_core_cert_without_key() -> None:
    # Omitted: the key is named as missing.
    assert_error(config_text().replace('key = "certs/proxy-client.key"\n', ""), "route[0].core_tls.key", "missing (required)")
    # Emptied: cert and key go together, and the empty one is named.
    assert_error(config_text().replace('key = "certs/proxy-client.key"', 'key = ""'),
                 "route[0].core_tls.key", "cert and key go together")
    assert_error(config_text().replace('cert = "certs/proxy-client.pem"', 'cert = ""'),
                 "route[0].core_tls.cert", "cert and key go together")


def test_core_without_client_certificate() -> None:
    tls = parse(config_text().replace('"certs/proxy-client.pem"', '""').replace('"certs/proxy-client.key"', '""')).routes[0].core_tls
    assert (tls.cert, tls.key) == (None, None)


@pytest.mark.parametrize("name", ["handshake_timeout", "connect_timeout", "idle_timeout", "half_close_timeout"])
def test_negative_timeouts(name: str) -> None:
    assert_error(config_text(limits=f"{name} = -1"), f"route[0].limits.{name}", "must not be negative, got -1")


def test_negative_top_level_and_mirror_numbers() -> None:
    assert_error(config_text(top="drain_timeout = -0.5"), "drain_timeout", "must not be negative, got -0.5")
    assert_error(config_text(extra="[mirror]\nqueue_size = -3"), "mirror.queue_size", "must not be negative")
    assert_error(config_text(extra="[mirror]\nqueue_size = 0"), "mirror.queue_size", "must be at least 1")
    assert_error(config_text(extra="[mirror]\nbatch_interval = 5"), "mirror.batch_interval", "between 0 and 1")


@pytest.mark.parametrize("name", ["handshake_timeout", "connect_timeout"])
def test_zero_handshake_and_connect_timeouts(name: str) -> None:
    assert_error(config_text(limits=f"{name} = 0"), f"route[0].limits.{name}", "must be positive")


def test_other_limits() -> None:
    assert_error(config_text(limits="max_connections = 0"), "route[0].limits.max_connections", "at least 1")
    assert_error(config_text(limits="max_sip_message = 100"), "route[0].limits.max_sip_message", "at least 1024")
    assert_error(config_text(customer="verify_depth = 0"), "route[0].customer.verify_depth", "between 1 and 10")
    assert parse(config_text(limits="idle_timeout = 0")).routes[0].limits.idle_timeout == 0.0


# -- endpoints --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("[::1", "unclosed [ in IPv6 address"),
        ("[::1]5061", "expected [IPv6]:port"),
        ("1.2.3.4:99999", "port must be 0..65535"),
        ("1.2.3.4:http", "port must be 0..65535"),
        ("1.2.3.4:-1", "port must be 0..65535"),
        ("1.2.3.4:", "missing port after ':'"),
        ("[::1]:", "missing port after ':'"),
        ("::1:5061", "write IPv6 addresses as [addr]:port"),
        ("fe80::1", "write IPv6 addresses as [addr]:port"),
        (":5061", "missing host"),
        ("[]:5061", "'' in brackets is not an IPv6 address"),
        ("[sbc.example]:5061", "'sbc.example' in brackets is not an IPv6 address"),
        ("", 'expected "host:port", got a string'),
    ],
)
def test_bad_endpoint(raw: str, problem: str) -> None:
    exc = assert_error(config_text(listen=f'"{raw}"'), "route[0].listen[0]", problem)
    if raw:
        assert repr(raw) in exc.problem


def test_bad_endpoint_in_core_and_list_position() -> None:
    assert_error(config_text(core_address='"[::1"'), "route[0].core[0].address", "unclosed [")
    assert_error(config_text(listen='["127.0.0.1:5061", "1.2.3.4:99999"]'), "route[0].listen[1]", "0..65535")
    assert_error(config_text(listen="[]"), "route[0].listen", "needs at least one entry")


@pytest.mark.parametrize(
    ("raw", "endpoint"),
    [
        ("[::1]:5061", Endpoint("::1", 5061)),
        ("[2001:db8::7]:5071", Endpoint("2001:db8::7", 5071)),
        ("[::1]", Endpoint("::1", DEFAULT_SIP_TLS_PORT)),
        ("127.0.0.1:0", Endpoint("127.0.0.1", 0)),
        ("sbc.example.net:5061", Endpoint("sbc.example.net", 5061)),
        ("host", Endpoint("host", DEFAULT_SIP_TLS_PORT)),  # a bare host takes SIP-TLS's port
    ],
)
def test_good_endpoint(raw: str, endpoint: Endpoint) -> None:
    assert parse(config_text(listen=f'"{raw}"')).routes[0].listen == (endpoint,)


def test_ipv6_endpoint_prints_bracketed() -> None:
    (endpoint,) = parse(config_text(listen='"[::1]:5061"')).routes[0].listen
    assert str(endpoint) == "[::1]:5061"


def test_single_string_for_listen_and_core() -> None:
    route = parse(config_text(listen='"127.0.0.1:5061"').replace(
        '[[route.core]]\naddress = "127.0.0.1:5062"\n', "").replace(
        'listen = "127.0.0.1:5061"', 'listen = "127.0.0.1:5061"\ncore = "127.0.0.1:5062"')).routes[0]
    assert route.listen == (Endpoint("127.0.0.1", 5061),)
    assert len(route.cores) == 1
    assert route.cores[0].address == Endpoint("127.0.0.1", 5062)
    assert route.cores[0].server_name is None


def test_cores_as_list_of_strings_and_failover_order() -> None:
    text = config_text().replace('[[route.core]]\naddress = "127.0.0.1:5062"\n', "").replace(
        'listen = "127.0.0.1:5061"', 'listen = ["127.0.0.1:5061", "[::1]:5061"]\ncore = ["10.0.0.1:5061", "10.0.0.2"]')
    route = parse(text).routes[0]
    assert route.listen == (Endpoint("127.0.0.1", 5061), Endpoint("::1", 5061))
    assert [c.address for c in route.cores] == [Endpoint("10.0.0.1", 5061), Endpoint("10.0.0.2", 5061)]


def test_hep_default_port() -> None:
    text = config_text(extra='[[mirror.hep]]\naddress = "homer.example"\n[[mirror.hep]]\naddress = "[::1]"\n'
                             '[[mirror.hep]]\naddress = "10.1.1.1:9999"')
    hep = parse(text).mirror.hep
    assert [h.address for h in hep] == [
        Endpoint("homer.example", HEP_COLLECTOR_PORT), Endpoint("::1", 9060), Endpoint("10.1.1.1", 9999)]
    assert HEP_COLLECTOR_PORT == 9060
    assert_error(config_text(extra='[[mirror.hep]]\naddress = "h:0"'), "mirror.hep[0].address", "needs a port")


# -- whole-config checks -----------------------------------------------------------------------


def second_route(name: str, listen: str) -> str:
    return "[[route]]" + config_text(listen=listen).split("[[route]]", 1)[1].replace('name = "lab"', f'name = "{name}"')


def test_two_routes() -> None:
    config = parse(config_text() + second_route("two", '"127.0.0.1:5071"'))
    assert [r.name for r in config.routes] == ["lab", "two"]


def test_duplicate_route_names() -> None:
    exc = assert_error(config_text() + second_route("lab", '"127.0.0.1:5071"'), "route[1].name", "'lab' is used twice")
    assert exc.problem == "route name 'lab' is used twice"


def test_same_listen_address_twice() -> None:
    # Routes may share an address (tests/config/test_listeners.py), but not behind a route
    # that takes every connection; one route cannot name an address twice.
    exc = assert_error(config_text() + second_route("two", '"127.0.0.1:5061"'), "route[1].match", "never be chosen")
    assert exc.problem.startswith("route 'two' can never be chosen: route 'lab' before it on 127.0.0.1:5061")
    assert_error(config_text(listen='["[::1]:5061", "[::1]:5061"]'), "route[0].listen", "[::1]:5061 is also used by route 'lab'")


def test_port_zero_may_repeat() -> None:
    config = parse(config_text(listen='"127.0.0.1:0"') + second_route("two", '"127.0.0.1:0"'))
    assert len(config.routes) == 2


def test_reverse_route() -> None:
    text = config_text(extra="""
[route.reverse]
listen = "127.0.0.1:5063"
customer = "192.0.2.10:5061"
[route.reverse.core_side]
cert = "certs/proxy-server.pem"
key = "certs/proxy-server.key"
client_ca = "certs/ca.pem"
key_exchange = "any"
[route.reverse.customer_tls]
cert = "certs/proxy-client.pem"
key = "certs/proxy-client.key"
ca = "certs/ca.pem"
""")
    reverse = parse(text).routes[0].reverse
    assert reverse is not None
    assert reverse.listen == (Endpoint("127.0.0.1", 5063),)
    assert reverse.customers[0].address == Endpoint("192.0.2.10", 5061)
    assert reverse.customer_tls.ciphers == RSA_KEX_CIPHERS  # reverse leg to the E-SBC: RSA kex by default
    assert reverse.customer_tls.max_version == "TLSv1.2"
    assert reverse.core_side.effective_max_version == "TLSv1.3"  # "any" on the core side: TLS 1.3 too
    assert_error(text.replace('"127.0.0.1:5063"', '"127.0.0.1:5061"'), "route[0].reverse.listen", "also used by route 'lab'")
    assert_error(text.replace('key_exchange = "any"', 'kex = "any"'), "route[0].reverse.core_side.kex", "unknown key")


# -- files: load_config ------------------------------------------------------------------------


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "siptap.toml"
    path.write_text(config_text())
    config = load_config(path)
    assert config.path == path
    assert config.routes[0].customer.cert == tmp_path / "certs/proxy-server.pem"
    assert load_config(str(path)).routes == config.routes


def test_invalid_toml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "siptap.toml"
    path.write_text('[log]\nformat = "json"\nlevel = info\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: invalid TOML: ")
    assert "line 3" in message
    assert info.value.key is None
    assert "\n" not in message


def test_duplicate_toml_key(tmp_path: Path) -> None:
    path = tmp_path / "siptap.toml"
    path.write_text('[log]\nformat = "json"\nformat = "console"\n')
    with pytest.raises(ConfigError, match=r"invalid TOML: .*line 3"):
        load_config(path)


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "siptap.toml"
    path.write_bytes(config_text().encode() + b'# caf\xe9\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: not UTF-8 text"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: cannot read: No such file or directory"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read: Is a directory"):
        load_config(tmp_path)


def test_load_config_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "siptap.toml"
    path.write_text(config_text(customer='key_exchange = "dh"'))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: route[0].customer.key_exchange (route 'lab'): 'dh' is not one of rsa, any"


# -- workers ----------------------------------------------------------------------------------


def test_workers_default_integer_and_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse(config_text()).workers == 1 and parse(config_text()).worker_count == 1
    assert parse(config_text(top="workers = 3")).worker_count == 3
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 5})
    config = parse(config_text(top='workers = "auto"'))
    assert config.workers == "auto" and config.worker_count == 3


@pytest.mark.parametrize("value, fragment", [
    ("0", "must be between 1 and 256"),
    ("-2", "must be between 1 and 256"),
    ("1000", "must be between 1 and 256"),
    ("true", "expected a positive integer or \"auto\", got a boolean"),
    ("2.5", "expected a positive integer or \"auto\", got a number"),
    ('"two"', "expected a positive integer or \"auto\", got 'two'"),
    ('"AUTO"', "got 'AUTO'"),
])
def test_workers_refused(value: str, fragment: str) -> None:
    assert_error(config_text(top=f"workers = {value}"), "workers", fragment)


def test_workers_need_fixed_listen_ports() -> None:
    exc = assert_error(config_text(top="workers = 2", listen='["127.0.0.1:5061", "127.0.0.1:0"]'), "workers",
                       "route[0].listen[1] (route 'lab') is 127.0.0.1:0")
    assert "port 0 would give each worker its own port" in exc.problem
    assert parse(config_text(top="workers = 1", listen='"127.0.0.1:0"')).worker_count == 1
