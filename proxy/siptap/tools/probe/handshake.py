"""One real OpenSSL handshake: a fresh TCP connection, one client context, and what it showed.

Used where a ServerHello alone cannot tell (the suite scan is :mod:`.suites`): the chain, the
client-certificate demands, a stapled OCSP response, whether a session resumes. Whether the
endpoint answered with a ServerHello and what failed later (a missing client certificate,
say) are kept apart in :class:`Outcome`; the state strings recorded by the context's info
callback tell how far the handshake got.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import trio
from cryptography import x509
from OpenSSL import SSL, crypto
from OpenSSL._util import lib as _lib

from siptap.errors import HandshakeFailed
from siptap.sansio.handshake import FailureReason, key_exchange_of
from siptap.tls.stream import OpenSSLStream
from siptap.tools.probe.offers import ClientIdentity, Offer, Recorder, client_context, ssl_text

# OpenSSL state string once our client has processed the endpoint's ServerHello.
_STATE_SERVER_HELLO = "read server hello"
_STATE_CERT_REQUEST = "read server certificate request"


@dataclass(slots=True)
class Outcome:
    connected: bool = False
    error: str | None = None  # connect failure or timeout before any answer
    server_hello: bool = False
    completed: bool = False
    version: str | None = None
    cipher: str | None = None
    key_exchange: str | None = None
    cert_requested: bool = False
    ca_names: tuple[str, ...] = ()
    chain: tuple[x509.Certificate, ...] = ()
    verify_errors: list[tuple[int, int, str, str]] = field(default_factory=list)
    failure: HandshakeFailed | None = None
    stream: OpenSSLStream | None = None
    session: SSL.Session | None = None  # to resume in a later attempt
    reused: bool = False  # the session handed in was resumed
    ocsp: bytes | None = None  # see Recorder.ocsp
    refused_after: str | None = None  # TLS 1.3: the endpoint ended the connection while we waited for tickets


def _name_text(name: crypto.X509Name) -> str:
    """An OpenSSL X509Name as 'CN=..,O=..' (RFC 4514 order: most specific first)."""
    try:
        parts = [(k.decode(), v.decode("utf-8", "replace")) for k, v in name.get_components()]
    except Exception:
        return str(name)
    escape = str.maketrans({",": "\\,", "+": "\\+", "=": "\\=", "\\": "\\\\"})
    return ",".join(f"{k}={v.translate(escape)}" for k, v in reversed(parts))


async def attempt_handshake(host: str, port: int, server_name: str, offer: Offer, *, identity: ClientIdentity | None,
                            ca: Path | None, timeout: float, keep: bool = False, ocsp: bool = False,
                            session: SSL.Session | None = None, ticket_wait: float = 0.0) -> Outcome:
    """One handshake on a new connection. ``ocsp`` asks for a stapled OCSP response;
    ``session`` is offered for resumption; ``ticket_wait`` (TLS 1.3) is how long to read after
    the handshake for the NewSessionTicket a TLS 1.3 server sends only then."""
    outcome = Outcome()
    recorder = Recorder()
    ctx = client_context(offer, identity, ca, recorder)
    try:
        with trio.fail_after(timeout):
            tcp = await trio.open_tcp_stream(host, port)
    except trio.TooSlowError:
        outcome.error = f"TCP connect timed out after {timeout:g} s"
        return outcome
    except OSError as exc:
        outcome.error = f"cannot connect: {exc.strerror or exc}"
        return outcome
    outcome.connected = True
    stream = OpenSSLStream(tcp, ctx, server_side=False, leg="probe", server_hostname=server_name)
    if ocsp:
        stream._conn.request_ocsp()
    if session is not None:
        # pyOpenSSL's set_session insists on the very same Context; OpenSSL itself only needs
        # a compatible one, and every attempt builds its own context (its own recorder).
        _lib.SSL_set_session(stream._conn._ssl, session._session)
    try:
        facts = await stream.do_handshake(timeout)
    except HandshakeFailed as exc:
        outcome.failure = exc
        facts = None
    conn = stream._conn
    outcome.server_hello = recorder.saw(_STATE_SERVER_HELLO) or facts is not None
    outcome.cert_requested = recorder.saw(_STATE_CERT_REQUEST)
    outcome.verify_errors = recorder.verify_errors
    outcome.ca_names = tuple(_name_text(n) for n in (conn.get_client_ca_list() or []))
    try:
        outcome.chain = tuple(conn.get_peer_cert_chain(as_cryptography=True) or ())
    except SSL.Error:
        outcome.chain = ()
    if outcome.server_hello:
        outcome.version = conn.get_protocol_version_name()
        outcome.cipher = conn.get_cipher_name()
        if facts is not None:
            outcome.key_exchange = facts.key_exchange
        elif outcome.cipher:
            outcome.key_exchange = key_exchange_of(outcome.version, outcome.cipher, None)
    if facts is not None:
        outcome.completed = True
        outcome.reused = bool(_lib.SSL_session_reused(conn._ssl))  # pyOpenSSL has no wrapper for it
        if ticket_wait > 0 and outcome.version == "TLSv1.3":
            outcome.refused_after = await settle(stream, ticket_wait)
        outcome.session = conn.get_session()
    outcome.ocsp = recorder.ocsp
    if outcome.failure is not None and outcome.failure.reason == FailureReason.TIMEOUT.value and not outcome.server_hello:
        outcome.error = f"timeout: no answer to our ClientHello ({outcome.failure.detail})"
    if keep and outcome.completed:
        outcome.stream = stream
    else:
        with trio.move_on_after(2):
            await stream.aclose()
    return outcome


def cause(exc: BaseException) -> str:
    inner = exc.__cause__
    if isinstance(inner, SSL.Error):
        return ssl_text(inner)
    return str(exc) or type(exc).__name__


async def settle(stream: OpenSSLStream, wait: float) -> str | None:
    """After a handshake without a client certificate: does a TLS 1.3 endpoint now refuse us?
    Returns the refusal, or None if nothing arrived (or only data) within ``wait``."""
    with trio.move_on_after(wait):
        try:
            data = await stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            return cause(exc)
        if not data:
            return CLOSED_AFTER_HANDSHAKE
    return None


# A close without a TLS alert: not, by itself, a verdict on our certificate (scan.py).
CLOSED_AFTER_HANDSHAKE = "the endpoint closed the connection right after the handshake"
