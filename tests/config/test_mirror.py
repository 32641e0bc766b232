"""Mirror settings: the shipped configuration's [mirror] section through the config loader,
the cross-field checks, and build_sinks."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from siptap.config import DEFAULT_SIP_TLS_PORT, Endpoint, Loader
from siptap.config.mirror import HepSinkSettings, JsonlSinkSettings, MirrorSettings, PcapSettings
from siptap.mirror.fanout import Fanout
from siptap.mirror.sink_factory import build_sinks

SHIPPED = """
[mirror]
legs = "customer"

[[mirror.hep]]
address = "127.0.0.1:9060"

[[mirror.jsonl]]
transport = "unix"
path = "captures/mirror.sock"

[mirror.keylog]
path = "captures/keys.log"

[mirror.pcap]
directory = "captures"

[mirror.srtp_keys]
path = "captures/srtp-keys.log"
"""


def load(text: str, base: Path) -> MirrorSettings:
    data = tomllib.loads(text)
    return Loader(base / "config.toml", default_port=DEFAULT_SIP_TLS_PORT).build(MirrorSettings, data["mirror"], "mirror")  # type: ignore[no-any-return]  # build() returns what the class given makes


def test_shipped_section_loads_with_paths_relative_to_the_config(tmp_path: Path) -> None:
    s = load(SHIPPED, tmp_path)
    assert s.legs == "customer" and s.mirror_legs == frozenset({"customer"})
    assert s.hep == (HepSinkSettings(Endpoint("127.0.0.1", 9060)),)
    assert s.hep[0].transport == "udp" and s.hep[0].ip_proto == "tcp" and s.hep[0].capture_id == 2001
    assert s.jsonl == (JsonlSinkSettings(transport="unix", path=tmp_path / "captures/mirror.sock"),)
    assert s.keylog is not None and s.keylog.path == tmp_path / "captures/keys.log"
    assert s.pcap == PcapSettings(directory=tmp_path / "captures")
    assert s.pcap.rotate_bytes == 100 * 1024 * 1024 and s.pcap.rotate_seconds == 3600.0
    assert s.srtp_keys is not None and s.srtp_keys.path == tmp_path / "captures/srtp-keys.log"
    assert s.enabled and not MirrorSettings().enabled
    names = [sink.name for sink in build_sinks(s)]
    assert names == ["hep:udp:127.0.0.1:9060", f"jsonl:unix:{tmp_path}/captures/mirror.sock", "keylog", "pcap",
                     "srtp_keys"]
    fanout = Fanout.from_settings(s)
    assert fanout.legs == frozenset({"customer"}) and fanout.queue_size == 10000


def test_loader_rejects_bad_choices(tmp_path: Path) -> None:
    from siptap.errors import ConfigError

    with pytest.raises(ConfigError, match="legs"):
        load('[mirror]\nlegs = "all"\n', tmp_path)
    with pytest.raises(ConfigError, match=r"mirror\.hep\[0\]\.transport"):
        load('[[mirror.hep]]\naddress = "127.0.0.1:9060"\ntransport = "sctp"\n', tmp_path)


def test_problems() -> None:
    assert JsonlSinkSettings(transport="unix").problems() == [("path", "transport 'unix' needs a socket path")]
    assert JsonlSinkSettings(transport="tcp", path=Path("x")).problems()[0][0] == "address"
    assert JsonlSinkSettings(transport="udp", address=Endpoint("h", 9)).problems() == []
    assert PcapSettings(directory=Path("d"), rotate_bytes=10).problems()[0][0] == "rotate_bytes"
    assert HepSinkSettings(Endpoint("h", 0)).problems()[0][0] == "address"
    assert MirrorSettings(queue_size=0).problems()[0][0] == "queue_size"


def test_duplicate_outputs_get_distinct_names() -> None:
    hep = HepSinkSettings(Endpoint("127.0.0.1", 9060))
    sinks = build_sinks(MirrorSettings(hep=(hep, hep)))
    assert [s.name for s in sinks] == ["hep:udp:127.0.0.1:9060", "hep:udp:127.0.0.1:9060#2"]
