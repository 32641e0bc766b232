"""The error vocabulary: every failure siptap reports to a user is one of these.

Each carries enough to print one clear line (what, where, why) without a traceback.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# The route a dotted key path points into: "route[2].customer.key" -> 2.
_ROUTE_INDEX = re.compile(r"route\[(\d+)\]")


class SiptapError(Exception):
    """Base of every error siptap reports to its user as one line plus a hint."""

    hint: str | None = None


class ConfigError(SiptapError):
    """A configuration problem, always naming the file and the dotted key path.

    ``route``: the ``name`` of the route the key points into. ``route[3]`` makes a user count
    ``[[route]]`` tables; the name is what they search for (and what the logs say), so a
    message carries both: ``config.toml: route[3].customer.key (route 'b'): ...``."""

    def __init__(self, file: str, key: str | None, problem: str, *, route: str | None = None) -> None:
        self.file = file
        self.key = key
        self.problem = problem
        self.route = route
        where = f"{file}: {key}" if key else file
        if route is not None:
            where += f" (route {route!r})"
        super().__init__(f"{where}: {problem}")

    def naming_route(self, names: Sequence[object]) -> ConfigError:
        """This error with ``route`` set from its key's index into ``names`` (each route's
        name, or anything else where a route has none yet); itself when there is nothing to add."""
        match = _ROUTE_INDEX.match(self.key or "")
        if self.route is not None or match is None:
            return self
        index = int(match[1])
        name = names[index] if index < len(names) else None
        if not isinstance(name, str):
            return self
        named = ConfigError(self.file, self.key, self.problem, route=name)
        named.hint = self.hint
        return named


class CertificateError(SiptapError):
    """A certificate or key file that cannot be used, naming the file and the problem."""

    # The config block whose TLS context failed ("customer", "core_tls", ...), when known:
    # set by the app while it builds a route's contexts, so the error can name the exact key.
    section: str | None = None

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class HandshakeFailed(SiptapError):
    """A TLS handshake that did not complete, with a classified reason.

    ``reason`` is one of :class:`siptap.sansio.handshake.FailureReason`'s values (a short stable
    token such as ``no_shared_cipher``) and ``detail`` is the human explanation,
    including OpenSSL's own words where they help.
    """

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class UpstreamError(SiptapError):
    """No upstream could be reached; ``attempts`` lists (address, why) for each one tried.

    ``peer`` names what was dialled: "core" on a forward route, the E-SBC on a reverse one."""

    def __init__(self, attempts: list[tuple[str, str]], peer: str = "core") -> None:
        self.attempts = attempts
        tried = "; ".join(f"{addr}: {why}" for addr, why in attempts) or "no upstream configured"
        super().__init__(f"no {peer} reachable ({tried})")


class ListenError(SiptapError):
    """A listen address that cannot be bound (in use, not local, no permission)."""

    hint = "is another siptap (or the SBC) already on that port? ports below 1024 need root or CAP_NET_BIND_SERVICE"
