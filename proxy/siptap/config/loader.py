"""The generic half of the configuration: a TOML table in, a frozen dataclass out.

The loader is driven by the dataclasses themselves, so adding a setting is adding a field:
a field's type says how its value is checked (``bool``, ``int``, ``float`` seconds, ``str``,
``Path``, :class:`~siptap.addresses.Endpoint`, optional values, tuples, nested dataclasses),
unknown keys are refused, relative paths resolve against the config file's folder. Every
problem is a :class:`~siptap.errors.ConfigError` naming the file and the dotted key path
(``route[0].customer.key``), because a user fixing a lab at 2 a.m. needs the exact line.

What the types cannot say, a settings module says in field metadata (the keys below) or in
a ``problems()`` method returning ``(key, problem)`` pairs for its cross-field checks. This
module knows no particular setting: :mod:`siptap.config.routes`, :mod:`siptap.config.mirror`
and :mod:`siptap.config.config_file` declare theirs.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import tomllib
import types
import typing
from collections.abc import Callable
from pathlib import Path

from siptap.addresses import Endpoint
from siptap.errors import ConfigError

# Field metadata understood by the loader.
CHOICES = "choices"  # str field: the allowed values
TOML_NAME = "toml_name"  # the TOML key when it differs from the field name ("core" for `cores`)
INTERNAL = "internal"  # not a TOML key: the caller supplies the value (Config.path)
DEFAULT_PORT = "default_port"  # Endpoint field: the port of a bare "host" (else the loader's)
ONE_OR_MORE = "one_or_more"  # tuple field: a single item may stand for a one-item list; empty is refused
DEFAULTS = "defaults"  # nested dataclass field: defaults that differ from the class's own
PARSE = "parse"  # a custom parser, (raw value, key, fail) -> value, for a field no type describes

# A class attribute naming the field a bare string stands for (``core = "10.0.0.1:5061"``).
SHORTHAND = "TOML_SHORTHAND"

Fail = Callable[[str, str], typing.NoReturn]


def choice(*allowed: str) -> dict[str, object]:
    """Metadata for a string field that takes one of ``allowed``."""
    return {CHOICES: allowed}


def read_toml(path: Path) -> dict[str, object]:
    """The file's TOML document; unreadable, non-UTF-8 and invalid TOML are ConfigErrors."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), None, f"cannot read: {exc.strerror or exc}") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(str(path), None, "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), None, f"invalid TOML: {exc}") from None


class Loader:
    """Builds dataclasses from TOML tables read from the file at ``path``.

    ``default_port``: the port an ``Endpoint`` written as a bare host gets, unless its field
    names its own (``DEFAULT_PORT`` metadata)."""

    def __init__(self, path: Path, *, default_port: int) -> None:
        self.path = path
        self.base = path.parent
        self.default_port = default_port

    def fail(self, key: str, problem: str) -> typing.NoReturn:
        raise ConfigError(str(self.path), key or None, problem)

    def build(self, cls: type, table: object, where: str, *, internal: dict[str, object] | None = None,
              defaults: dict[str, object] | None = None) -> typing.Any:
        """``cls`` from ``table`` (at key path ``where``); ``internal`` supplies the fields that
        are not TOML keys, ``defaults`` overrides field defaults."""
        if not isinstance(table, dict):
            self.fail(where, f"expected a table, got {tname(table)}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        toml_names = {f.metadata.get(TOML_NAME, name): name for name, f in fields.items()
                      if not f.metadata.get(INTERNAL)}
        for key in table:
            if key not in toml_names:
                known = ", ".join(sorted(toml_names))
                self.fail(join(where, key), f"unknown key{did_you_mean(key, toml_names)} (known here: {known})")
        values: dict[str, object] = dict(internal or {})
        for toml_name, name in toml_names.items():
            f = fields[name]
            key = join(where, toml_name)
            if toml_name in table:
                values[name] = self.value(hints[name], table[toml_name], key, f)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                self.fail(key, "missing (required)")
        for name, value in (defaults or {}).items():
            values.setdefault(name, value)
        try:
            obj = cls(**values)
        except TypeError as exc:  # pragma: no cover - defensive
            self.fail(where, str(exc))
        # The first cross-field problem the settings class reports, at its own key.
        for key, problem in getattr(obj, "problems", list)():
            self.fail(join(where, key), problem)
        return obj

    def value(self, hint: object, raw: object, key: str, f: dataclasses.Field[typing.Any]) -> object:
        parse = f.metadata.get(PARSE)
        if parse is not None:
            return parse(raw, key, self.fail)
        return self._typed(hint, raw, key, f)

    def _typed(self, hint: object, raw: object, key: str, f: dataclasses.Field[typing.Any]) -> object:
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if origin in (typing.Union, types.UnionType):
            non_none = [a for a in args if a is not type(None)]
            # An empty string unsets an optional value, except an optional string ("" is a string).
            if raw is None or (raw == "" and type(None) in args and non_none[0] is not str):
                return None
            return self._typed(non_none[0], raw, key, f)
        if hint is Path:
            if not isinstance(raw, str) or not raw:
                self.fail(key, f"expected a file path (string), got {tname(raw)}")
            p = Path(raw).expanduser()
            return p if p.is_absolute() else (self.base / p)
        if hint is bool:
            if not isinstance(raw, bool):
                self.fail(key, f"expected true or false, got {tname(raw)}")
            return raw
        if hint is int:
            if isinstance(raw, bool) or not isinstance(raw, int):
                self.fail(key, f"expected an integer, got {tname(raw)}")
            if raw < 0:
                self.fail(key, f"must not be negative, got {raw}")
            return raw
        if hint is float:
            if isinstance(raw, bool) or not isinstance(raw, (int, float)):
                self.fail(key, f"expected a number of seconds, got {tname(raw)}")
            if raw < 0:
                self.fail(key, f"must not be negative, got {raw}")
            return float(raw)
        if hint is str:
            if not isinstance(raw, str):
                self.fail(key, f"expected a string, got {tname(raw)}")
            choices = f.metadata.get(CHOICES)
            if choices and raw not in choices:
                self.fail(key, f"{raw!r} is not one of {', '.join(choices)}{did_you_mean(raw, choices)}")
            return raw
        if hint is Endpoint:
            return self.endpoint(raw, key, default_port=f.metadata.get(DEFAULT_PORT, self.default_port))
        if origin is tuple:
            item = args[0]
            one_or_more = f.metadata.get(ONE_OR_MORE, False)
            if one_or_more and isinstance(raw, (str, dict)):
                raw = [raw]  # a single listen address / core is fine
            if not isinstance(raw, list):
                self.fail(key, f"expected a list, got {tname(raw)}")
            items = tuple(self._typed(item, r, f"{key}[{i}]", f) for i, r in enumerate(raw))
            if one_or_more and not items:
                self.fail(key, "needs at least one entry")
            return items
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            shorthand = getattr(hint, SHORTHAND, None)
            if shorthand is not None and isinstance(raw, str):
                raw = {shorthand: raw}
            return self.build(hint, raw, key, defaults=f.metadata.get(DEFAULTS))
        self.fail(key, f"unsupported type {hint}")  # pragma: no cover

    def endpoint(self, raw: object, key: str, default_port: int) -> Endpoint:
        if not isinstance(raw, str) or not raw:
            self.fail(key, f"expected \"host:port\", got {tname(raw)}")
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


def did_you_mean(given: str, known: typing.Iterable[str]) -> str:
    """``"; did you mean 'listen'?"`` for the known word closest to a misspelt one (difflib's
    ratio, case-insensitive: ``Key_Exchange`` finds ``key_exchange``), or "" when none is close."""
    by_folded = {word.casefold(): word for word in known}
    close = difflib.get_close_matches(given.casefold(), list(by_folded), n=1, cutoff=0.75)
    return f"; did you mean {by_folded[close[0]]!r}?" if close else ""


def join(where: str, key: str) -> str:
    """The dotted key path of ``key`` inside the table at ``where``."""
    return f"{where}.{key}" if where else key


def tname(value: object) -> str:
    """A TOML value's type as an error message names it."""
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)
