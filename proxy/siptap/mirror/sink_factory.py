"""The sinks a ``[mirror]`` section asks for, built and named: the one place that knows them all.

:meth:`siptap.mirror.fanout.Fanout.from_settings` calls :func:`build_sinks`; the fan-out
itself knows only the :class:`~siptap.mirror.sink.Sink` interface, and no sink module imports
another (ARCHITECTURE.md rule 5), so the list of concrete outputs lives here alone.
"""

from __future__ import annotations

from typing import Unpack

from siptap.config.mirror import CollectorTls, HepSinkSettings, JsonlSinkSettings, MirrorSettings
from siptap.errors import CertificateError
from siptap.mirror.collector_tls import client_context
from siptap.mirror.hep import HepSink
from siptap.mirror.jsonl import JsonlSink
from siptap.mirror.keylog import KeylogSink
from siptap.mirror.link import LinkOptions
from siptap.mirror.pcap import PcapSink
from siptap.mirror.sink import Sink
from siptap.mirror.srtp import SrtpKeysSink

__all__ = ["build_sinks"]


def build_sinks(settings: MirrorSettings, **options: Unpack[LinkOptions]) -> list[Sink]:
    """The sinks the settings ask for, named for logs and stats (``hep:udp:127.0.0.1:9060``,
    ``jsonl:unix:/path``, ``keylog``, ``pcap``, ``srtp_keys``; a numeric suffix keeps two
    identical outputs apart). ``options`` (e.g. ``backoff_initial``) go to the socket sinks.
    Nothing is opened or connected here: that happens in :meth:`siptap.mirror.fanout.Fanout.run`;
    but a ``transport = "tls"`` output's certificate, key and CA files are read and checked
    here, so a bad one fails start-up and ``siptap check``: a CertificateError whose
    ``section`` is the config key naming the file (``mirror.hep[0].key``)."""
    sinks: list[Sink] = []
    # Names must be unique: the fan-out refuses duplicates, and stats, metrics labels and
    # drop warnings are keyed by name, so two identical outputs would merge their counts.
    used: set[str] = set()

    def unique(name: str) -> str:
        candidate, n = name, 1
        while candidate in used:
            n += 1
            candidate = f"{name}#{n}"
        used.add(candidate)
        return candidate

    # The socket sinks name themselves from their endpoint; only a repeat needs a suffix.
    # The order (HEP, JSON lines, then the files) is the order stats and logs list them in.
    socket_sinks: list[Sink] = [HepSink(hep, **_tls_options(hep, f"mirror.hep[{i}]", options))
                                for i, hep in enumerate(settings.hep)]
    socket_sinks += [JsonlSink(jsonl, **_tls_options(jsonl, f"mirror.jsonl[{i}]", options))
                     for i, jsonl in enumerate(settings.jsonl)]
    for sink in socket_sinks:
        sink.name = unique(sink.name)
        sinks.append(sink)
    if settings.keylog is not None:
        sinks.append(KeylogSink(settings.keylog.path, name=unique("keylog")))
    if settings.pcap is not None:
        sinks.append(PcapSink(settings.pcap, name=unique("pcap")))
    if settings.srtp_keys is not None:
        sinks.append(SrtpKeysSink(settings.srtp_keys.path, name=unique("srtp_keys")))
    # After the renaming: the drop reporter's warnings must carry the final, unique name, or
    # a "#2" sink's drops would be reported under its twin's name.
    for sink in sinks:
        sink.reporter.sink = sink.name
    return sinks


def _tls_options(settings: HepSinkSettings | JsonlSinkSettings, where: str, options: LinkOptions) -> LinkOptions:
    """``options`` plus, for a ``transport = "tls"`` output, its TLS context and settings."""
    tls = settings.tls
    if tls is None:
        return options
    try:
        context = client_context(tls)
    except CertificateError as exc:
        exc.section = f"{where}.{_key_naming(tls, exc.path)}"
        raise
    return {**options, "tls_context": context, "tls": tls}


def _key_naming(tls: CollectorTls, path: str) -> str:
    for name in ("cert", "key", "ca"):
        if str(getattr(tls, name)) == path:
            return name
    return "ca"  # pragma: no cover - every CertificateError above names one of the three files
