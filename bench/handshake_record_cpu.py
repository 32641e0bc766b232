"""Issue 16 item 6, by hand: the relay's CPU per handshake record, and the mirror's.

One real mutual-TLS handshake (siptap's server context, the lab PKI, a customer client over
a trio memory stream pair); then, N times over the handshaken connection, what the relay
does to hand its record over (collect the facts from OpenSSL, make the record's members,
encode the datagram) and what the mirror does with that datagram (decode, rebuild the facts,
summarise the chain where it comes as DER, render the ``handshake_done`` line's members).
Reports µs per handshake record for each side. Runs against whichever siptap is on the path:
``PYTHONPATH=OTHER/proxy`` measures another checkout (the old API, summaries made in the
relay, is detected).

    python bench/handshake_record_cpu.py [N]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from siptap.config import ServerTlsSettings
from siptap.sansio import chunk_records
from siptap.sansio.handshake import HandshakeFacts
from siptap.tls import facts as tls_facts
from siptap.tls.contexts import build_server_context, certificate_cache
from siptap.tls.stream import OpenSSLStream
from siptap.tools.pki import init_lab_pki
from tests.tls.helpers import customer_client_context

RAW = hasattr(tls_facts, "collect_handshake")  # this change; else the relay summarises


async def handshaken(pki: Path) -> tuple[OpenSSLStream, tls_facts.HandshakeObserver]:
    ctx = build_server_context(ServerTlsSettings(cert=pki / "proxy-server.pem", key=pki / "proxy-server.key",
                                                 client_ca=pki / "ca.pem"))
    a, b = trio.testing.memory_stream_pair()
    server = OpenSSLStream(a, ctx, server_side=True, leg="customer")
    client = trio.SSLStream(b, customer_client_context(pki), server_hostname="localhost")
    # Kept: the stream lets its observer go after the handshake; the record needs the
    # client's hello the observer's sniffer saw (the client_offer of the customer leg).
    observer = server.observer
    assert observer is not None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)
    return server, observer


def main(n: int) -> None:
    pki = Path(tempfile.mkdtemp()) / "pki"
    init_lab_pki(pki)
    server, observer = trio.run(handshaken, pki)
    conn, cache = server._conn, certificate_cache(server._conn.get_context())
    assert observer.client_hello is not None

    def relay() -> bytes:
        if RAW:
            data, chain = tls_facts.collect_handshake(conn, observer).handover()
            return chunk_records.encode(chunk_records.HandshakeDone(1, 1.0, "customer", data, chain))
        data = tls_facts.collect_facts(conn, observer, cache).as_dict(secrets=True)
        return chunk_records.encode(chunk_records.HandshakeDone(1, 1.0, "customer", data))

    datagram = relay()
    if RAW:
        from siptap.certificates import CertificateCache
        mirror_cache = CertificateCache()
    from dataclasses import replace

    def mirror() -> dict[str, object]:
        record = chunk_records.decode(datagram)
        assert isinstance(record, chunk_records.HandshakeDone)
        facts = HandshakeFacts.from_dict(record.facts)
        if RAW and record.chain:
            facts = replace(facts, peer_chain=tuple(mirror_cache.summary(der) for der in record.chain))
        return facts.as_dict(secrets=True)  # what log_handshake renders from

    for name, work in (("relay", relay), ("mirror", mirror)):
        work()
        start = time.process_time()
        for _ in range(n):
            work()
        print(f"{name}: {(time.process_time() - start) / n * 1e6:.1f} us per handshake record "
              f"({'raw chain' if RAW else 'summaries in the relay'}, datagram {len(datagram)} bytes)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000)
