"""siptap's configuration: TOML in, frozen dataclasses out.

Every problem is reported as a :class:`~siptap.errors.ConfigError` naming the file and the
dotted key path (``route[0].customer.key``), because a user fixing a lab at 2 a.m. needs to
know exactly which line. The loader is driven by the dataclasses themselves: a field's type
says how its value is checked, unknown keys are refused, relative paths resolve against the
config file's folder. Files are only named here; :mod:`siptap.app` opens them (``check``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from siptap.addresses import Endpoint
from siptap.errors import ConfigError
from siptap.mirror.settings import HepSinkSettings, MirrorSettings

# The six TLS_RSA_WITH_AES_* suites (OpenSSL names), strongest first. A server preferring
# its own order with only these makes a client that lists ECDHE first still pick RSA.
RSA_KEX_CIPHERS = "AES256-GCM-SHA384:AES128-GCM-SHA256:AES256-SHA256:AES128-SHA256:AES256-SHA:AES128-SHA"
# sngrep 1.6 implements only 0x009D, 0x0035 and 0x002F.
SNGREP_CIPHERS = "AES256-GCM-SHA384:AES256-SHA:AES128-SHA"
# Core leg default: forward-secret AEAD suites for TLS 1.2 (TLS 1.3 uses OpenSSL's defaults).
MODERN_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:ECDHE+AES:!aNULL:!eNULL:!MD5:!DSS"

TLS_VERSIONS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
DEFAULT_SIP_TLS_PORT = 5061
HEP_COLLECTOR_PORT = 9060
METRICS_PORT = 9464


def _choice(*allowed: str) -> dict[str, object]:
    return {"choices": allowed}


@dataclass(frozen=True, slots=True)
class ServerTlsSettings:
    """siptap as the TLS server (customer leg; core leg of a reverse route)."""

    cert: Path
    key: Path
    client_ca: Path
    verify_client: bool = True
    verify_depth: int = 4
    allow: tuple[str, ...] = ()
    key_exchange: str = field(default="rsa", metadata=_choice("rsa", "any"))
    min_version: str = field(default="TLSv1.2", metadata=_choice(*TLS_VERSIONS))
    max_version: str = field(default="TLSv1.2", metadata=_choice(*TLS_VERSIONS))
    ciphers: str | None = None  # override; default follows key_exchange / sngrep_compatible
    resumption: bool = False
    sngrep_compatible: bool = False
    allow_insecure_key_permissions: bool = False
    # PEM file of one or more CRLs, each signed by a CA in client_ca; reloaded on SIGHUP.
    crl: Path | None = None
    crl_check: str = field(default="leaf", metadata=_choice("leaf", "chain"))  # chain: every CA too

    @property
    def effective_ciphers(self) -> str:
        if self.ciphers:
            return self.ciphers
        if self.sngrep_compatible:
            return SNGREP_CIPHERS
        if self.key_exchange == "rsa":
            return RSA_KEX_CIPHERS
        return MODERN_CIPHERS + ":" + RSA_KEX_CIPHERS

    @property
    def effective_max_version(self) -> str:
        # Forced RSA key exchange cannot exist in TLS 1.3.
        return "TLSv1.2" if self.key_exchange == "rsa" else self.max_version


@dataclass(frozen=True, slots=True)
class ClientTlsSettings:
    """siptap as the TLS client (core leg; customer leg of a reverse route)."""

    cert: Path | None
    key: Path | None
    ca: Path | None
    verify: bool = True
    server_name: str | None = None  # SNI and the name checked against the certificate
    check_hostname: bool = True
    send_sni: bool = True
    min_version: str = field(default="TLSv1.2", metadata=_choice(*TLS_VERSIONS))
    max_version: str = field(default="TLSv1.3", metadata=_choice(*TLS_VERSIONS))
    ciphers: str = MODERN_CIPHERS
    tls13_ciphersuites: str | None = None
    allow_insecure_key_permissions: bool = False
    crl: Path | None = None  # CRLs for the peer's certificate, each signed by a CA in `ca`
    crl_check: str = field(default="leaf", metadata=_choice("leaf", "chain"))


@dataclass(frozen=True, slots=True)
class Upstream:
    """One core SBC; upstreams are tried in the order given (failover)."""

    address: Endpoint
    server_name: str | None = None  # defaults to the host of `address`


@dataclass(frozen=True, slots=True)
class Limits:
    handshake_timeout: float = 10.0
    connect_timeout: float = 5.0
    # 0 disables. SIP trunks idle for hours between calls (CRLF keepalives at best): the
    # default never cuts them; dead peers are found by TCP keepalive instead.
    idle_timeout: float = 0.0
    half_close_timeout: float = 5.0
    max_connections: int = 1000
    max_sip_message: int = 65536


@dataclass(frozen=True, slots=True)
class ReverseRoute:
    """Core-initiated connections: siptap serves the core and re-originates to the E-SBC."""

    listen: tuple[Endpoint, ...]
    core_side: ServerTlsSettings
    customers: tuple[Upstream, ...]
    customer_tls: ClientTlsSettings


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    listen: tuple[Endpoint, ...]
    customer: ServerTlsSettings
    cores: tuple[Upstream, ...]
    core_tls: ClientTlsSettings
    limits: Limits = Limits()
    reverse: ReverseRoute | None = None


@dataclass(frozen=True, slots=True)
class LogSettings:
    format: str = field(default="json", metadata=_choice("json", "console"))
    level: str = field(default="info", metadata=_choice("debug", "info", "warning", "error"))
    sip_messages: bool = True  # one event per relayed SIP message (headers summary)
    sip_payloads: bool = False  # the full cleartext in each SIP event
    key_material: bool = True  # NSS key-log lines in the handshake events (secrets!)
    queue_size: int = 10000  # events held for the writer before dropping (never block the relay)


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """Prometheus endpoint; loopback by default, because it tells who talks to whom."""

    enabled: bool = False
    address: Endpoint = Endpoint("127.0.0.1", 9464)  # noqa: RUF009 - frozen, shared safely


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    routes: tuple[Route, ...]
    log: LogSettings = LogSettings()
    mirror: MirrorSettings = MirrorSettings()  # noqa: RUF009 - frozen, shared safely
    metrics: MetricsSettings = MetricsSettings()
    drain_timeout: float = 30.0  # on SIGTERM/SIGINT: how long live connections may finish
    # Processes sharing each listen address (SO_REUSEPORT), each its own trio loop: a positive
    # integer, or "auto" (the CPUs this process may run on). 1: one process, no supervisor.
    workers: int | str = 1

    @property
    def worker_count(self) -> int:
        """``workers`` resolved: "auto" is the number of CPUs this process may use."""
        return usable_cpus() if self.workers == "auto" else int(self.workers)


MAX_WORKERS = 256


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, so taskset/cgroup cpusets count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


# -- loading -----------------------------------------------------------------------------

# TOML key names that differ from the field names.
_RENAMES = {
    (Route, "cores"): "core",
    (ReverseRoute, "customers"): "customer",
    (Config, "routes"): "route",
}

_ROUTE_DEFAULTS_FOR_REVERSE_CLIENT = {"ciphers": RSA_KEX_CIPHERS, "max_version": "TLSv1.2"}


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), None, f"cannot read: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(str(path), None, "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), None, f"invalid TOML: {exc}") from None
    return parse_config(data, path)


def parse_config(data: dict[str, object], path: Path) -> Config:
    loader = _Loader(path)
    if "path" in data:
        raise ConfigError(str(path), "path", "unknown key")
    config = loader.build(Config, {**data, "path": str(path)}, "")
    if not config.routes:
        raise ConfigError(str(path), "route", "at least one [[route]] is required")
    names = [r.name for r in config.routes]
    for index, name in enumerate(names):
        if name in names[:index]:
            raise ConfigError(str(path), f"route[{index}].name", f"route name {name!r} is used twice")
    seen: dict[Endpoint, str] = {}
    for index, route in enumerate(config.routes):
        listens = [(e, "listen") for e in route.listen]
        listens += [(e, "reverse.listen") for e in route.reverse.listen] if route.reverse else []
        for endpoint, key in listens:
            if endpoint in seen and endpoint.port != 0:
                raise ConfigError(str(path), f"route[{index}].{key}", f"{endpoint} is also used by {seen[endpoint]}")
            seen[endpoint] = f"route {route.name!r}"
    workers = config.worker_count
    if workers > 1:
        for index, route in enumerate(config.routes):
            listens = [(e, f"listen[{i}]") for i, e in enumerate(route.listen)]
            listens += [(e, f"reverse.listen[{i}]") for i, e in enumerate(route.reverse.listen)] if route.reverse else []
            for endpoint, key in listens:
                if endpoint.port == 0:
                    raise ConfigError(str(path), "workers",
                                      f"{workers} workers share each listen address, so every port must be fixed: "
                                      f"route[{index}].{key} is {endpoint} (port 0 would give each worker its own port)")
    return config


class _Loader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.base = path.parent

    def fail(self, key: str, problem: str) -> typing.NoReturn:
        raise ConfigError(str(self.path), key or None, problem)

    def build(self, cls: type, table: object, where: str) -> typing.Any:
        if not isinstance(table, dict):
            self.fail(where, f"expected a table, got {_tname(table)}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        toml_names = {_RENAMES.get((cls, name), name): name for name in fields}
        if cls is Config:
            values_path = table.get("path")  # set by parse_config, never by the user
            toml_names.pop("path")
        for key in table:
            if key not in toml_names and not (cls is Config and key == "path"):
                known = ", ".join(sorted(toml_names))
                self.fail(_join(where, key), f"unknown key (known here: {known})")
        values: dict[str, object] = {}
        for toml_name, name in toml_names.items():
            f = fields[name]
            key = _join(where, toml_name)
            if toml_name in table:
                values[name] = self.value(hints[name], table[toml_name], key, f, cls)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
                self.fail(key, "missing (required)")
        if cls is Config:
            values["path"] = Path(values_path)
        if cls is ClientTlsSettings and where.endswith("customer_tls"):
            for k, v in _ROUTE_DEFAULTS_FOR_REVERSE_CLIENT.items():
                values.setdefault(k, v)
        try:
            obj = cls(**values)
        except TypeError as exc:  # pragma: no cover - defensive
            self.fail(where, str(exc))
        self.validate(obj, where)
        return obj

    def value(self, hint: object, raw: object, key: str, f: dataclasses.Field, owner: type) -> object:
        if owner is Config and f.name == "workers":
            return self.workers(raw, key)
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if origin in (typing.Union, types.UnionType):
            non_none = [a for a in args if a is not type(None)]
            if raw is None or (raw == "" and type(None) in args and non_none[0] is not str):
                return None
            return self.value(non_none[0], raw, key, f, owner)
        if hint is Path:
            if not isinstance(raw, str) or not raw:
                self.fail(key, f"expected a file path (string), got {_tname(raw)}")
            p = Path(raw).expanduser()
            return p if p.is_absolute() else (self.base / p)
        if hint is bool:
            if not isinstance(raw, bool):
                self.fail(key, f"expected true or false, got {_tname(raw)}")
            return raw
        if hint is int:
            if isinstance(raw, bool) or not isinstance(raw, int):
                self.fail(key, f"expected an integer, got {_tname(raw)}")
            if raw < 0:
                self.fail(key, f"must not be negative, got {raw}")
            return raw
        if hint is float:
            if isinstance(raw, bool) or not isinstance(raw, (int, float)):
                self.fail(key, f"expected a number of seconds, got {_tname(raw)}")
            if raw < 0:
                self.fail(key, f"must not be negative, got {raw}")
            return float(raw)
        if hint is str:
            if not isinstance(raw, str):
                self.fail(key, f"expected a string, got {_tname(raw)}")
            choices = f.metadata.get("choices")
            if choices and raw not in choices:
                self.fail(key, f"{raw!r} is not one of {', '.join(choices)}")
            return raw
        if hint is Endpoint:
            port = {HepSinkSettings: HEP_COLLECTOR_PORT, MetricsSettings: METRICS_PORT}.get(owner, DEFAULT_SIP_TLS_PORT)
            return self.endpoint(raw, key, default_port=port)
        if origin is tuple:
            item = args[0]
            if isinstance(raw, (str, dict)) and item in (Endpoint, Upstream):
                raw = [raw]  # a single listen address / core is fine
            if not isinstance(raw, list):
                self.fail(key, f"expected a list, got {_tname(raw)}")
            items = tuple(self.value(item, r, f"{key}[{i}]", f, owner) for i, r in enumerate(raw))
            if item in (Endpoint, Upstream) and not items:
                self.fail(key, "needs at least one entry")
            return items
        if hint is Upstream:
            if isinstance(raw, str):
                raw = {"address": raw}
            return self.build(Upstream, raw, key)
        if dataclasses.is_dataclass(hint):
            return self.build(hint, raw, key)  # type: ignore[arg-type]
        self.fail(key, f"unsupported type {hint}")  # pragma: no cover

    def workers(self, raw: object, key: str) -> int | str:
        if raw == "auto":
            return raw
        if isinstance(raw, bool) or not isinstance(raw, int):
            self.fail(key, f"expected a positive integer or \"auto\", got {_tname(raw) if not isinstance(raw, str) else repr(raw)}")
        if not 1 <= raw <= MAX_WORKERS:
            self.fail(key, f"must be between 1 and {MAX_WORKERS} (or \"auto\"), got {raw}")
        return raw

    def endpoint(self, raw: object, key: str, default_port: int) -> Endpoint:
        if not isinstance(raw, str) or not raw:
            self.fail(key, f"expected \"host:port\", got {_tname(raw)}")
        host, port_text = raw, ""
        if raw.startswith("["):
            end = raw.find("]")
            if end < 0:
                self.fail(key, f"{raw!r}: unclosed [ in IPv6 address")
            host, rest = raw[1:end], raw[end + 1 :]
            if rest and not rest.startswith(":"):
                self.fail(key, f"{raw!r}: expected [IPv6]:port")
            port_text = rest[1:]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                self.fail(key, f"{raw!r}: {host!r} in brackets is not an IPv6 address")
        elif raw.count(":") == 1:
            host, port_text = raw.split(":")
        elif raw.count(":") > 1:
            # Never guess: "::1:5061" is itself a valid IPv6 address.
            self.fail(key, f"{raw!r}: write IPv6 addresses as [addr]:port")
        if raw.endswith(":"):
            self.fail(key, f"{raw!r}: missing port after ':'")
        if port_text:
            if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
                self.fail(key, f"{raw!r}: port must be 0..65535")
            port = int(port_text)
        else:
            port = default_port
        if not host:
            self.fail(key, f"{raw!r}: missing host")
        return Endpoint(host, port)

    def validate(self, obj: object, where: str) -> None:
        for key, problem in getattr(obj, "problems", list)():
            self.fail(_join(where, key), problem)
        if isinstance(obj, ServerTlsSettings):
            if obj.key_exchange == "rsa" and obj.min_version == "TLSv1.3":
                self.fail(_join(where, "min_version"), "RSA key exchange needs TLS 1.2; use key_exchange = \"any\" for TLS 1.3")
            if _TLS_ORDER[obj.min_version] > _TLS_ORDER[obj.max_version] and obj.key_exchange != "rsa":
                self.fail(_join(where, "min_version"), "min_version is above max_version")
            if not 1 <= obj.verify_depth <= 10:
                self.fail(_join(where, "verify_depth"), "must be between 1 and 10")
            if obj.crl is not None and not obj.verify_client:
                self.fail(_join(where, "crl"), "a CRL needs verify_client = true")
            from siptap.tls.identity import AllowList

            try:
                AllowList.parse(obj.allow)
            except ValueError as exc:
                self.fail(_join(where, "allow"), str(exc))
        elif isinstance(obj, ClientTlsSettings):
            if _TLS_ORDER[obj.min_version] > _TLS_ORDER[obj.max_version]:
                self.fail(_join(where, "min_version"), "min_version is above max_version")
            if obj.crl is not None and (not obj.verify or obj.ca is None):
                self.fail(_join(where, "crl"), "a CRL needs verify = true and a `ca` bundle whose CA signed it")
            if (obj.cert is None) != (obj.key is None):
                self.fail(_join(where, "key" if obj.key is None else "cert"), "cert and key go together: give both or neither")
        elif isinstance(obj, Limits):
            if obj.max_connections < 1:
                self.fail(_join(where, "max_connections"), "must be at least 1")
            for name in ("handshake_timeout", "connect_timeout"):
                if getattr(obj, name) <= 0:
                    self.fail(_join(where, name), "must be positive")
            if obj.max_sip_message < 1024:
                self.fail(_join(where, "max_sip_message"), "must be at least 1024 bytes")


_TLS_ORDER = {v: i for i, v in enumerate(TLS_VERSIONS)}


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _tname(value: object) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)
