"""Heap per OpenSSL connection in one process (issue 16, S4 attribution): glibc's ``mallinfo2``
before and after N connections of one leg, each handshaken over memory BIOs against a peer
that is then freed, the BIOs renewed as OpenSSLStream does (FastRecords.renew_bios).

    .venv/bin/python bench/ssl_memory.py PKI_DIR [N] [VARIANT...]

PKI_DIR: a lab PKI (``siptap.tools.pki.init_lab_pki``; bench/chain.make_pki makes one).
Variants: ``pre`` (no handshake: SSL_new and pyOpenSSL's wrapper only), ``norenew`` (keep the
handshake's BIOs), ``classical-core`` (the core peer knows X25519/P-256 only, like OpenSSL 3.0),
``x25519-only`` (siptap's client offers X25519 alone), ``default-groups`` (siptap's client with
OpenSSL's default key shares, as before session 7). Prints KiB per connection per leg and the
core leg's negotiated group.
"""

from __future__ import annotations

import ctypes
import gc
import sys
from pathlib import Path

from OpenSSL import SSL
from OpenSSL._util import ffi, lib

from siptap.config.routes import ClientTlsSettings, ServerTlsSettings
from siptap.tls.contexts import build_client_context, build_server_context
from siptap.tls.records import FastRecords


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _MallInfo2
_DEFAULT_GROUPS = (b"?*X25519MLKEM768:?SecP256r1MLKEM768:?curveSM2MLKEM768:?*X25519:?secp256r1:?X448:"
                   b"?secp384r1:?secp521r1:?curveSM2:?ffdhe2048:?ffdhe3072")


def heap() -> int:
    gc.collect()
    info = _libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def contexts(pki: Path, variants: set[str]) -> dict[str, SSL.Context]:
    ours_server = build_server_context(ServerTlsSettings(
        cert=pki / "proxy-server.pem", key=pki / "proxy-server.key", client_ca=pki / "ca.pem"))
    ours_client = build_client_context(ClientTlsSettings(
        cert=pki / "proxy-client.pem", key=pki / "proxy-client.key", ca=pki / "ca.pem", server_name="localhost"))
    customer = SSL.Context(SSL.TLS_METHOD)
    customer.use_certificate_chain_file(str(pki / "customer.pem"))
    customer.use_privatekey_file(str(pki / "customer.key"))
    customer.set_max_proto_version(SSL.TLS1_2_VERSION)
    customer.set_cipher_list(b"AES256-GCM-SHA384")
    core = SSL.Context(SSL.TLS_METHOD)
    core.use_certificate_chain_file(str(pki / "core.pem"))
    core.use_privatekey_file(str(pki / "core.key"))
    core.load_verify_locations(str(pki / "ca.pem"))
    core.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *args: True)
    core.set_options(SSL.OP_NO_TICKET)
    if "classical-core" in variants:
        assert lib.SSL_CTX_set1_curves_list(core._context, b"X25519:P-256") == 1
    if "x25519-only" in variants:
        assert lib.SSL_CTX_set1_curves_list(ours_client._context, b"X25519") == 1
    if "default-groups" in variants:
        assert lib.SSL_CTX_set1_curves_list(ours_client._context, _DEFAULT_GROUPS) == 1
    return {"server": ours_server, "client": ours_client, "customer": customer, "core": core}


def shuttle(a: SSL.Connection, b: SSL.Connection) -> None:
    for _ in range(50):
        moved = False
        for src, dst in ((a, b), (b, a)):
            try:
                dst.bio_write(src.bio_read(65536))
                moved = True
            except SSL.WantReadError:
                pass
        done = True
        for conn in (a, b):
            try:
                conn.do_handshake()
            except SSL.WantReadError:
                done = False
        if done and not moved:
            return
    raise RuntimeError("the handshake did not complete")


def one(leg: str, ctxs: dict[str, SSL.Context], variants: set[str], groups: dict[str, int]) -> object:
    if leg == "customer":
        ours = SSL.Connection(ctxs["server"], None)
        ours.set_accept_state()
        peer = SSL.Connection(ctxs["customer"], None)
        peer.set_connect_state()
    else:
        ours = SSL.Connection(ctxs["client"], None)
        ours.set_connect_state()
        ours.set_tlsext_host_name(b"localhost")
        peer = SSL.Connection(ctxs["core"], None)
        peer.set_accept_state()
    if "pre" in variants:
        return ours
    shuttle(peer, ours)
    del peer
    records = FastRecords(ours)
    if "norenew" not in variants:
        records.renew_bios(eof=False)
    name = lib.SSL_get0_group_name(ours._ssl)
    if name != ffi.NULL:
        key = ffi.string(name).decode()
        groups[key] = groups.get(key, 0) + 1
    return ours, records


def main() -> None:
    pki = Path(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    variants = set(sys.argv[3:])
    ctxs = contexts(pki, variants)
    for leg in ("customer", "core"):
        groups: dict[str, int] = {}
        for _ in range(5):
            one(leg, ctxs, variants, groups)
        before = heap()
        kept = [one(leg, ctxs, variants, groups) for _ in range(n)]
        after = heap()
        print(f"{leg}: {(after - before) / n / 1024:.2f} KiB per connection ({len(kept)} kept), "
              f"variants {sorted(variants) or '-'}, groups {groups or '-'}")
        del kept


if __name__ == "__main__":
    main()
