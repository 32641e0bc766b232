"""The config file as a whole: the top-level settings, and loading a file into a Config.

:func:`load_config` reads the TOML and :func:`parse_config` builds a :class:`Config` with
the generic loader, then checks what spans routes (unique names, no listen address used
twice, fixed ports when several workers share them). Files are only named here;
:mod:`siptap.app` opens them (``siptap check``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from siptap.addresses import Endpoint
from siptap.config.listeners import check_listeners
from siptap.config.loader import DEFAULT_PORT, INTERNAL, PARSE, TOML_NAME, Fail, Loader, choice, read_toml, tname
from siptap.config.mirror import MirrorSettings
from siptap.config.routes import DEFAULT_SIP_TLS_PORT, Route
from siptap.errors import ConfigError

METRICS_PORT = 9464
MAX_WORKERS = 256


@dataclass(frozen=True, slots=True)
class LogSettings:
    format: str = field(default="json", metadata=choice("json", "console"))
    level: str = field(default="info", metadata=choice("debug", "info", "warning", "error"))
    sip_messages: bool = True  # one event per relayed SIP message (headers summary)
    sip_payloads: bool = False  # the full cleartext in each SIP event
    key_material: bool = True  # NSS key-log lines in the handshake events (secrets!)
    queue_size: int = 10000  # events held for the writer before dropping (never block the relay)


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """Prometheus endpoint; loopback by default, because it tells who talks to whom."""

    enabled: bool = False
    address: Endpoint = field(default=Endpoint("127.0.0.1", METRICS_PORT), metadata={DEFAULT_PORT: METRICS_PORT})


def _parse_workers(raw: object, key: str, fail: Fail) -> int | str:
    if raw == "auto":
        return raw
    if isinstance(raw, bool) or not isinstance(raw, int):
        fail(key, f"expected a positive integer or \"auto\", got {tname(raw) if not isinstance(raw, str) else repr(raw)}")
    if not 1 <= raw <= MAX_WORKERS:
        fail(key, f"must be between 1 and {MAX_WORKERS} (or \"auto\"), got {raw}")
    return raw


@dataclass(frozen=True, slots=True)
class Config:
    path: Path = field(metadata={INTERNAL: True})  # the file it came from, for reload and messages
    routes: tuple[Route, ...] = field(metadata={TOML_NAME: "route"})
    log: LogSettings = LogSettings()
    mirror: MirrorSettings = MirrorSettings()  # noqa: RUF009 - frozen, shared safely
    metrics: MetricsSettings = MetricsSettings()
    drain_timeout: float = 30.0  # on SIGTERM/SIGINT: how long live connections may finish
    # Processes sharing each listen address (SO_REUSEPORT), each its own trio loop: a positive
    # integer, or "auto" (the CPUs this process may run on). 1: one process, no supervisor.
    workers: int | str = field(default=1, metadata={PARSE: _parse_workers})

    @property
    def worker_count(self) -> int:
        """``workers`` resolved: "auto" is the number of CPUs this process may use."""
        return usable_cpus() if self.workers == "auto" else int(self.workers)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, so taskset/cgroup cpusets count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def load_config(path: str | Path) -> Config:
    path = Path(path)
    return parse_config(read_toml(path), path)


def parse_config(data: dict[str, object], path: Path) -> Config:
    """The Config in ``data``; a ConfigError names the file, the key and, for a key inside a
    route, that route's ``name``."""
    try:
        return _parse_config(data, path)
    except ConfigError as exc:
        routes = data.get("route")
        names = [table.get("name") if isinstance(table, dict) else None
                 for table in (routes if isinstance(routes, list) else [])]
        raise exc.naming_route(names) from None


def _parse_config(data: dict[str, object], path: Path) -> Config:
    if "path" in data:
        raise ConfigError(str(path), "path", "unknown key")
    data = _inherit_customer_blocks(data)
    config: Config = Loader(path, default_port=DEFAULT_SIP_TLS_PORT).build(Config, data, "", internal={"path": path})
    if not config.routes:
        raise ConfigError(str(path), "route", "at least one [[route]] is required")
    names = [r.name for r in config.routes]
    for index, name in enumerate(names):
        if name in names[:index]:
            raise ConfigError(str(path), f"route[{index}].name", f"route name {name!r} is used twice")
    # Forward routes may share a listen address (config/listeners.py); a reverse route's
    # address is its own: the core side has no routing.
    seen: dict[Endpoint, tuple[str, bool]] = {}  # -> (route name, whether its reverse.listen)
    for index, route in enumerate(config.routes):
        mine = [(e, "listen", False) for e in route.listen]
        mine += [(e, "reverse.listen", True) for e in route.reverse.listen] if route.reverse else []
        for endpoint, key, reverse in mine:
            other = seen.get(endpoint)
            if other is not None and endpoint.port != 0 and (reverse or other[1] or other[0] == route.name):
                raise ConfigError(str(path), f"route[{index}].{key}", f"{endpoint} is also used by route {other[0]!r}")
            seen[endpoint] = (route.name, reverse)
    check_listeners(config.routes, path)
    workers = config.worker_count
    if workers > 1:
        for index, route in enumerate(config.routes):
            listens = [(e, f"listen[{i}]") for i, e in enumerate(route.listen)]
            listens += [(e, f"reverse.listen[{i}]") for i, e in enumerate(route.reverse.listen)] if route.reverse else []
            for endpoint, key in listens:
                if endpoint.port == 0:
                    raise ConfigError(str(path), "workers",
                                      f"{workers} workers share each listen address, so every port must be fixed: "
                                      f"route[{index}].{key} (route {route.name!r}) is {endpoint} "
                                      "(port 0 would give each worker its own port)")
    return config


def _inherit_customer_blocks(data: dict[str, object]) -> dict[str, object]:
    """``data`` with each ``[[route]]`` that has no ``[route.customer]`` given the block of the
    first earlier route with the same ``listen`` and ``match.sni`` (as written): routes sharing
    an address must repeat that block exactly (config/listeners.py), so they need not write it.
    A route with no such earlier route stays without, and the loader says it is missing."""
    routes = data.get("route")
    if not isinstance(routes, list):
        return data
    tables = [dict(table) if isinstance(table, dict) else table for table in routes]
    for index, table in enumerate(tables):
        if not isinstance(table, dict) or "customer" in table:
            continue
        for earlier in tables[:index]:
            if isinstance(earlier, dict) and "customer" in earlier and _sharing_key(earlier) == _sharing_key(table):
                table["customer"] = earlier["customer"]
                break
    return {**data, "route": tables}


def _sharing_key(table: dict[str, object]) -> tuple[frozenset[str] | None, frozenset[str] | None]:
    """A raw route table's listen addresses and SNI names, as written (a lone string as a list)."""
    match = table.get("match")
    sni = _strings(match.get("sni", []) if isinstance(match, dict) else [])
    return _strings(table.get("listen")), frozenset(n.lower().rstrip(".") for n in sni) if sni is not None else None


def _strings(raw: object) -> frozenset[str] | None:
    if isinstance(raw, str):
        return frozenset({raw})
    if isinstance(raw, list) and all(isinstance(item, str) for item in raw):
        return frozenset(raw)
    return None  # not strings: the loader will say what is wrong with it
