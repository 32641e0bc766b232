"""Routes sharing a listen address: how they group, what they must agree on, and the errors
that name the file, the routes and the key when they cannot share."""

from __future__ import annotations

import re

import pytest

from siptap.config.listeners import listener_groups
from siptap.errors import ConfigError
from tests.config.test_config import FILE, parse


def route(name: str, *, match: str = "", customer: str = "", limits: str = "", listen: str = '"127.0.0.1:5061"',
          cert: str = "certs/proxy-server.pem") -> str:
    return f"""
[[route]]
name = "{name}"
listen = {listen}
core = "127.0.0.1:5062"
{f"match = {{ {match} }}" if match else ""}
[route.customer]
cert = "{cert}"
key = "{cert.removesuffix('.pem')}.key"
client_ca = "certs/ca.pem"
{customer}
[route.core_tls]
cert = "certs/proxy-client.pem"
key = "certs/proxy-client.key"
ca = "certs/ca.pem"
[route.limits]
{limits}
"""


def refused(text: str, key: str, *fragments: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert info.value.key == key, str(info.value)
    # The key, then the route it belongs to by name (config errors name routes so).
    assert re.match(rf"{re.escape(str(FILE))}: {re.escape(key)} \(route '[^']+'\): ", str(info.value)), str(info.value)
    for fragment in fragments:
        assert fragment in info.value.problem, str(info.value)
    return info.value.problem


def test_routes_on_one_address_share_one_listener() -> None:
    config = parse(route("acme", match='client = ["cn:acme"]') + route("globex", match='client = ["issuer:Globex CA"]')
                   + route("lab2", listen='"127.0.0.1:5071"') + route("rest"))
    groups = listener_groups(config.routes)
    assert [(g.name, g.routed) for g in groups] == [("acme|globex|rest", True), ("lab2", False)]
    assert config.routes[0].match.client == ("cn:acme",)


def test_one_route_without_match_is_not_routed_but_one_with_match_is() -> None:
    assert not listener_groups(parse(route("lab")).routes)[0].routed
    assert listener_groups(parse(route("lab", match='sni = ["a.example"]')).routes)[0].routed


def test_sni_groups_pick_candidates_and_the_handshake_block() -> None:
    config = parse(route("a", match='sni = ["A.example."]', cert="certs/a.pem")
                   + route("b", match='sni = ["b.example"], client = ["cn:x"]', cert="certs/b.pem")
                   + route("b2", match='sni = ["b.example"]', cert="certs/b.pem")
                   + route("plain", match='client = ["cn:y"]'))
    group = listener_groups(config.routes)[0]
    assert group.named_sni == {"a.example", "b.example"}
    assert [r.name for r in group.candidates("b.example")] == ["b", "b2"]
    assert [r.name for r in group.candidates("a.example")] == ["a"]
    # No SNI, or one no route names: the routes without sni.
    assert [r.name for r in group.candidates(None)] == ["plain"]
    assert [r.name for r in group.candidates("c.example")] == ["plain"]
    assert group.handshake_route("b.example").name == "b"
    assert group.handshake_route(None).name == "plain"


def test_a_listener_wide_setting_must_agree() -> None:
    problem = refused(route("a", match='client = ["cn:a"]') + route("b", customer='min_version = "TLSv1.1"'),
                      "route[1].customer.min_version", "route 'a'", "127.0.0.1:5061")
    assert problem.startswith("'TLSv1.1' here, 'TLSv1.2' in route 'a': routes sharing 127.0.0.1:5061 must agree")
    refused(route("a", match='client = ["cn:a"]') + route("b", limits="max_connections = 5"),
            "route[1].limits.max_connections", "route 'a'")
    refused(route("a", match='client = ["cn:a"]') + route("b", customer="verify_depth = 2"),
            "route[1].customer.verify_depth")
    # max_version as in force: with key_exchange "rsa" both are TLS 1.2, however written.
    parse(route("a", match='client = ["cn:a"]') + route("b", customer='max_version = "TLSv1.2"', cert="certs/b.pem",
                                                         match='sni = ["b.example"]'))
    refused(route("a", match='client = ["cn:a"]', customer='key_exchange = "any"')
            + route("b", customer='key_exchange = "any"\nmax_version = "TLSv1.2"', match='sni = ["b.example"]'),
            "route[1].customer.max_version", "'TLSv1.2' here, 'TLSv1.3' in route 'a'")


def test_one_handshake_block_per_sni_group() -> None:
    # Same SNI group (no sni on either): the server certificate must be the same.
    problem = refused(route("a", match='client = ["cn:a"]') + route("b", cert="certs/other.pem"),
                      "route[1].customer.cert", "'a' and 'b'")
    assert "connections without a listed SNI" in problem
    refused(route("a", match='sni = ["x.example"], client = ["cn:a"]') + route("b", match='sni = ["x.example"]',
                                                                            customer='allow = ["cn:b"]'),
            "route[1].customer.allow", "SNI 'x.example'")
    # Different SNI groups: different certificates, CAs and suites are fine.
    parse(route("a", match='sni = ["x.example"]', customer='ciphers = "AES128-SHA"')
          + route("b", cert="certs/other.pem", customer='allow = ["cn:b"]'))


def test_a_route_behind_a_catch_all_is_refused() -> None:
    refused(route("all") + route("late", match='client = ["cn:x"]'), "route[1].match",
            "route 'late' can never be chosen: route 'all' before it")
    # A catch-all of another SNI group does not shadow it.
    parse(route("x", match='sni = ["x.example"]') + route("rest"))


def test_sharing_needs_the_same_address_list() -> None:
    refused(route("a", match='client = ["cn:a"]')
            + route("b", listen='["127.0.0.1:5061", "127.0.0.1:5071"]'), "route[1].listen",
            "shares an address with route 'a'")


def test_port_zero_is_never_shared() -> None:
    config = parse(route("a", listen='"127.0.0.1:0"') + route("b", listen='"127.0.0.1:0"'))
    assert [g.name for g in listener_groups(config.routes)] == ["a", "b"]


def test_match_keys_are_checked() -> None:
    refused(route("a", match='client = ["cn"]'), "route[0].match.client", "entry 'cn': expected cn:NAME")
    refused(route("a", match='client = ["issuer:CN=x,,O=y"]'), "route[0].match.client", "empty attribute")
    refused(route("a", match='sni = ["*.example"]'), "route[0].match.sni[0]", "wildcards are not supported")
    refused(route("a", match='sni = ["bad name"]'), "route[0].match.sni[0]", "is not a host name")
    refused(route("a", match='colour = "red"'), "route[0].match.colour", "unknown key")
    refused(route("a", match='client = ["cn:a"]', customer="verify_client = false"), "route[0].match.client",
            "needs customer.verify_client = true")


def test_a_route_may_mirror_its_own_legs() -> None:
    config = parse(route("a", match='client = ["cn:a"]') + route("b").replace('core = "127.0.0.1:5062"',
                                                                             'core = "127.0.0.1:5062"\nmirror_legs = "both"'))
    default = config.mirror.mirror_legs
    assert default == {"customer"}
    assert [r.mirrored_legs(default) for r in config.routes] == [{"customer"}, {"customer", "core"}]
    refused(route("a").replace('core = "127.0.0.1:5062"', 'core = "127.0.0.1:5062"\nmirror_legs = "all"'),
            "route[0].mirror_legs", "'all' is not one of customer, core, both")


def without_customer(text: str) -> str:
    head, rest = text.split("[route.customer]", 1)
    return head + "[route.core_tls]" + rest.split("[route.core_tls]", 1)[1]


def test_a_sharing_route_may_leave_out_the_customer_block() -> None:
    config = parse(route("a", match='client = ["cn:a"]', customer='allow = ["cn:a", "cn:b"]')
                   + route("s", match='sni = ["S.example"], client = ["cn:s"]', cert="certs/s.pem")
                   + without_customer(route("b", match='client = ["cn:b"]'))
                   + without_customer(route("s2", match='sni = ["s.example"], client = ["cn:x"]')))
    a, s, b, s2 = config.routes
    assert b.customer == a.customer and b.customer.allow == ("cn:a", "cn:b")
    assert s2.customer == s.customer  # the same SNI names take the same block
    # Nothing to take it from: the loader's own error.
    refused(route("a", listen='"127.0.0.1:5071"') + without_customer(route("b", match='client = ["cn:b"]')),
            "route[1].customer", "missing (required)")
