"""The customer leg's TLS behaviour against `siptap run`, over real sockets:

* ``key_exchange = "any"`` with no ``max_version`` admits a TLS 1.3-only E-SBC (README:
  "admits ECDHE and TLS 1.3"), and a wire capture of that leg decrypts in tshark with the
  key log siptap wrote, and not without it;
* a TLS client whose Finished fails its integrity check is logged as ``bad_record_mac``, not
  as a peer that does not speak TLS.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import trio

from siptap.tools.lab.core import start_lab_core
from siptap.tools.lab.customer import CustomerSession, customer_context
from tests.integration.capture import LoopbackCapture, require, tshark_fields
from tests.relay.harness import SiptapProcess, write_config
from tests.tls.helpers import customer_client_context
from tests.tls.test_key_mismatch import tampering_client


def _call_ids(messages: list[bytes]) -> list[str]:
    return [line.split(b":", 1)[1].strip().decode() for m in messages for line in m.split(b"\r\n")
            if line.lower().startswith(b"call-id:")]


@require("tcpdump", "tshark")
async def test_key_exchange_any_admits_tls13_and_the_key_log_decrypts_it(pki: Path, tmp_path: Path) -> None:
    keylog = tmp_path / "keys.log"
    tls13_only = customer_context(pki)
    tls13_only.minimum_version = ssl.TLSVersion.TLSv1_3
    async with trio.open_nursery() as nursery:
        _core, core_port = await start_lab_core(nursery, pki)
        config = write_config(tmp_path, pki, cores=[core_port], customer='key_exchange = "any"',
                              top=f'[mirror.keylog]\npath = "{keylog}"\n')
        siptap = SiptapProcess(config)
        await siptap.start(nursery)
        port = await siptap.port()
        with LoopbackCapture(tmp_path / "customer-leg.pcap", [port]) as capture:
            session = await CustomerSession.connect("127.0.0.1", port, tls13_only)
            codes = await session.call()
            await session.aclose()
            await siptap.wait_for("connection_closed")
            await capture.wait_for_close(2)
        assert await siptap.stop() == 0  # the key log is complete
        nursery.cancel_scope.cancel()

    assert codes == ["100", "180", "200", "200"]
    assert siptap.find("handshake_failed") == []
    customer_hs = siptap.find("handshake_done", leg="customer")[0]
    assert customer_hs["version"] == "TLSv1.3" and customer_hs["key_exchange"].startswith("TLSv1.3")
    sent_ids = sorted(_call_ids(session.sent) + _call_ids(session.received))
    rows = tshark_fields(capture.path, ["sip.Call-ID"], "-o", f"tls.keylog_file:{keylog}", "-o", f"sip.tls.port:{port}")
    # One frame may carry several SIP messages: tshark lists their Call-IDs comma-separated.
    assert sorted(cid for r in rows for cid in r[0].split(",")) == sent_ids
    assert tshark_fields(capture.path, ["sip.Call-ID"], "-o", f"sip.tls.port:{port}") == []  # opaque without it
    assert "CLIENT_TRAFFIC_SECRET_0" in keylog.read_text()


async def test_a_corrupted_finished_is_logged_as_bad_record_mac(pki: Path, tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        _core, core_port = await start_lab_core(nursery, pki)
        siptap = SiptapProcess(write_config(tmp_path, pki, cores=[core_port]))
        await siptap.start(nursery)
        ctx = customer_client_context(pki, ciphers="AES256-GCM-SHA384", maximum=ssl.TLSVersion.TLSv1_2)
        client_saw = await tampering_client(await siptap.port(), ctx, "finished")
        await siptap.wait_for("connection_closed")
        assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()
    assert client_saw.startswith("error"), client_saw
    (failed,) = siptap.find("handshake_failed")
    assert failed["reason"] == "bad_record_mac", failed
    assert "not speaking TLS" not in failed["detail"]
    assert siptap.find("connection_closed")[0]["reason"] == "handshake_failed: bad_record_mac"
    assert siptap.find("session_crashed") == []
