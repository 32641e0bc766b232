"""SRTP keys file sink: one grep-friendly line per SDES key seen in relayed SDP.

Encrypted SIP protects ``a=crypto`` keys on the wire; siptap is where they become
visible. Each :class:`~siptap.mirror.events.SrtpKeyEvent` appends one line of
space-separated ``key=value`` fields (values never contain spaces, except the quoted last
one)::

    2024-05-01T10:00:00.123456Z call-id=a84b4c76e66710 conn=c1 leg=customer dir=client->server
      sip=INVITE media=audio addr=192.0.2.10:49170 suite=AES_CM_128_HMAC_SHA1_80 tag=1
      inline=WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz key=59535f... salt=7d0a... key_salt=59535f...7d0a...
      rtp_decoder="-s AES_CM_128_HMAC_SHA1_80 -k 59535f...7d0a... -f 'src host 192.0.2.10 and udp src port 49170'"

(one line in the file). Meaning:

- ``dir``: direction of the SIP message on that leg; ``sip``: its method or status code.
- ``addr``: the media address and port from the same SDP (``c=``/``m=``; ``-`` when the SDP
  had no address). In SDES (RFC 4568) each side announces the key *it* encrypts with, and
  the address where it *receives*; with symmetric RTP (RFC 4961, near universal behind
  SBCs) it also sends from there. So this key decrypts the SRTP sent *from* ``addr``.
- ``inline``: key||salt base64 exactly as in SDP; ``key``/``salt``/``key_salt``: hex.
- ``rtp_decoder``: arguments for libsrtp's ``test/rtp_decoder``, which reads a pcap on
  stdin: ``eval rtp_decoder $ARGS < capture.pcap``. Option names from libsrtp
  (cisco/libsrtp ``test/rtp_decoder.c``): ``-s <suite>`` sets key and tag size by RFC 4568
  name (it knows AES_CM_128_HMAC_SHA1_80 and _32), ``-k <hex key||salt>`` the master key,
  ``-e <128|256>`` ``-a`` ``-t <tag octets>`` ``-g`` select AES-256 or GCM by hand, ``-f``
  a pcap filter. ``unsupported`` for suites it cannot decode (AES-192, F8, unknown).

File: appended, created 0600 (parent folder 0700), one ``os.write`` per batch; failures
are counted and retried as for the key log (:class:`siptap.mirror.files.FileSink`).
"""

from __future__ import annotations

import re
from pathlib import Path

from siptap.mirror.events import ConnectionClosed, KeyEvent, MirrorEvent, SipEvent, SrtpKeyEvent
from siptap.mirror.files import FileSink
from siptap.mirror.render import iso_utc
from siptap.sansio.sdp_crypto import SdesKey

# suite -> rtp_decoder options selecting cipher, key size and tag length (before -k: the
# tool's -e/-s allocate the key buffer and would overwrite an earlier -k).
_RTP_DECODER_SUITE_ARGS = {
    "AES_CM_128_HMAC_SHA1_80": "-s AES_CM_128_HMAC_SHA1_80",
    "AES_CM_128_HMAC_SHA1_32": "-s AES_CM_128_HMAC_SHA1_32",
    "AES_256_CM_HMAC_SHA1_80": "-e 256 -a -t 10",
    "AES_256_CM_HMAC_SHA1_32": "-e 256 -a -t 4",
    "AEAD_AES_128_GCM": "-g -e 128 -t 16",
    "AEAD_AES_256_GCM": "-g -e 256 -t 16",
}


# What a token may not contain: whitespace (as str.isspace: re's \s on str patterns is
# the same Unicode test) and quotes; one search, and a substitution only when one is there.
_NOT_TOKEN = re.compile(r"[\s\"']")


def _token(text: str | None) -> str:
    if not text:
        return "-"
    return _NOT_TOKEN.sub("_", text) if _NOT_TOKEN.search(text) else text


def rtp_decoder_args(key: SdesKey) -> str | None:
    """libsrtp ``rtp_decoder`` arguments for this key, or None if it cannot decode it."""
    suite_args = _RTP_DECODER_SUITE_ARGS.get(key.suite)
    if suite_args is None:
        return None
    pcap_filter = f"udp src port {key.port}"
    if key.connection_address:
        pcap_filter = f"src host {key.connection_address} and {pcap_filter}"
    return f"{suite_args} -k {key.master_key_hex}{key.master_salt_hex} -f '{pcap_filter}'"


def srtp_key_line(event: SrtpKeyEvent) -> str:
    key, leg = event.key, event.leg
    call_id, conn_id, sip, media = event.call_id, leg.conn_id, event.method_or_status, key.media
    suite, inline, lifetime, mki = key.suite, key.key_params_b64, key.lifetime, key.mki
    # Usually no value has anything _token would replace: one test of all of them together
    # (C-speed ``in`` and ``split``; ``split()`` splits on exactly what ``str.isspace``
    # calls whitespace, as _NOT_TOKEN's \s does) instead of a regex search per value.
    joined = f"{call_id}{conn_id}{sip}{media}{suite}{inline}{lifetime}{mki}"
    if '"' in joined or "'" in joined or joined.split() != [joined]:
        call_id, conn_id, sip, media = _token(call_id), _token(conn_id), _token(sip), _token(media)
        suite, inline, lifetime, mki = _token(suite), _token(inline), lifetime and _token(lifetime), mki and _token(mki)
    else:  # what _token gives a value with nothing to replace
        call_id, conn_id, sip, media = call_id or "-", conn_id or "-", sip or "-", media or "-"
        suite, inline = suite or "-", inline or "-"
    address = key.connection_address or "-"
    addr = f"[{address}]:{key.port}" if ":" in address else f"{address}:{key.port}"
    key_hex, salt_hex = key.master_key.hex(), key.master_salt.hex()
    args = rtp_decoder_args(key)
    line = (
        f"{iso_utc(event.ts)} call-id={call_id} conn={conn_id} leg={leg.leg}"
        f" dir={'client->server' if event.from_client else 'server->client'} sip={sip}"
        f" media={media} addr={addr} suite={suite} tag={key.tag}"
        f" inline={inline} key={key_hex} salt={salt_hex or '-'} key_salt={key_hex}{salt_hex}"
    )
    if lifetime:
        line += f" lifetime={lifetime}"
    if mki:
        line += f" mki={mki}"
    return line + (f' rtp_decoder="{args}"' if args else " rtp_decoder=unsupported")


class SrtpKeysSink(FileSink):
    """Appends one :func:`srtp_key_line` per SDES key."""

    def __init__(self, path: Path, *, name: str = "srtp_keys", **retry: float) -> None:
        super().__init__(name, path, **retry)

    def accepts(self, event: MirrorEvent) -> bool:
        return isinstance(event, SrtpKeyEvent)

    def accepts_kind(self, kind: type) -> bool | None:
        return True if kind is SrtpKeyEvent else (False if kind in (SipEvent, KeyEvent, ConnectionClosed) else None)

    def render(self, event: MirrorEvent) -> str:
        assert isinstance(event, SrtpKeyEvent)
        return srtp_key_line(event) + "\n"
