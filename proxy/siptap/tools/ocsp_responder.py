"""A lab OCSP responder for the lab CA (``siptap certs ocsp``): good, revoked, slow, or absent.

It answers for the lab CA in a PKI folder (``ca.pem``/``ca.key``), with responses signed by
that CA (the simplest authorised signer, RFC 6960 4.2.2.2), built with ``cryptography``'s
``x509.ocsp``. A certificate is revoked when the folder's ``crl.pem`` lists it (``siptap certs
revoke``), read again for every request, so revoking takes effect at once; every other serial
is good (a lab CA keeps no list of what it issued). Requests about another issuer get
``unauthorized``. Responses are valid for ``validity`` (thisUpdate now, nextUpdate then), so
siptap's cache can be watched. ``delay`` makes it slow, to show siptap's timeout; stopping it
shows the ``soft``/``hard`` policies.

HTTP/1.1 over trio with h11 (the same sans-IO HTTP the product's OCSP client uses), POST
(``application/ocsp-request``) and the GET form of RFC 6960 A.1 (the base64 request in the
path), one request per connection. ``requests`` counts the OCSP requests answered.
"""

from __future__ import annotations

import argparse
import base64
import sys
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import h11
import trio
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509 import ocsp

from siptap.errors import CertificateError
from siptap.tls.pem import load_certificate_chain, load_crls, load_private_key

__all__ = ["LabOcspResponder"]

_MAX_REQUEST = 16384  # an OCSP request is a few hundred bytes
_IO_TIMEOUT = 10.0  # a client that stalls mid-request is dropped


class LabOcspResponder:
    """Answers OCSP requests for the lab CA in ``directory``."""

    def __init__(self, directory: Path, *, validity: timedelta = timedelta(hours=1), delay: float = 0.0,
                 report: Callable[[str], None] | None = None) -> None:
        self.directory = Path(directory)
        self.ca = load_certificate_chain(self.directory / "ca.pem")[0]
        key = load_private_key(self.directory / "ca.key")
        self._key: CertificateIssuerPrivateKeyTypes = key  # type: ignore[assignment]  # the lab CA's key: RSA or EC
        self.validity = validity
        self.delay = delay
        self.report = report  # one line per answer (the CLI prints them)
        self.requests = 0
        # When set, answers wait until the event is set (tests hold requests in flight with it).
        self.hold: trio.Event | None = None

    def revoked(self) -> dict[int, datetime]:
        """Serial -> revocation date, from ``crl.pem`` (when this CA signed it)."""
        path = self.directory / "crl.pem"
        if not path.exists():
            return {}
        try:
            crls = load_crls(path)
        except CertificateError:
            return {}
        out: dict[int, datetime] = {}
        for crl in crls:
            if crl.issuer == self.ca.subject and crl.is_signature_valid(self.ca.public_key()):  # type: ignore[arg-type]  # CA keys sign
                out.update((entry.serial_number, entry.revocation_date_utc) for entry in crl)
        return out

    def respond(self, request_der: bytes, *, now: datetime | None = None) -> bytes:
        """The DER response to one DER request (pure but for reading ``crl.pem``)."""
        try:
            request = ocsp.load_der_ocsp_request(request_der)
        except ValueError:
            return _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        algorithm = request.hash_algorithm
        probe = ocsp.OCSPRequestBuilder().add_certificate(self.ca, self.ca, algorithm).build()
        # Our CA's name and key hashes (the CA is self-signed, so a request about the CA itself
        # carries them; its serial is irrelevant): are we asked about a certificate it issued?
        if (request.issuer_name_hash, request.issuer_key_hash) != (probe.issuer_name_hash, probe.issuer_key_hash):
            return _unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
        now = now or datetime.now(UTC)
        revoked_on = self.revoked().get(request.serial_number)
        if self.report is not None:
            self.report(f"serial {request.serial_number:X}: {'revoked' if revoked_on else 'good'}")
        builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
            issuer_name_hash=request.issuer_name_hash, issuer_key_hash=request.issuer_key_hash,
            serial_number=request.serial_number, algorithm=algorithm,
            cert_status=ocsp.OCSPCertStatus.REVOKED if revoked_on else ocsp.OCSPCertStatus.GOOD,
            this_update=now - timedelta(seconds=1), next_update=now + self.validity,
            revocation_time=revoked_on, revocation_reason=None,
        ).responder_id(ocsp.OCSPResponderEncoding.HASH, self.ca)
        return builder.sign(self._key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)

    async def serve(self, host: str = "127.0.0.1", port: int = 0, *,
                    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on ``host:port`` (0: a free port) and answer until cancelled; reports the port."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            with trio.move_on_after(_IO_TIMEOUT):
                await self._answer(stream)

    async def _answer(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        request: h11.Request | None = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(4096)
                conn.receive_data(data)
                if not data and conn.their_state is not h11.DONE:
                    return
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > _MAX_REQUEST:
                    return
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)) or event is h11.PAUSED:
                break
        if request is None:
            return
        if request.method == b"GET":
            encoded = urllib.parse.unquote(request.target.decode("ascii", "replace").rsplit("/", 1)[-1])
            try:
                body = base64.b64decode(encoded, validate=False)
            except ValueError:
                body = b""
        self.requests += 1
        if self.delay:
            await trio.sleep(self.delay)
        if self.hold is not None:
            await self.hold.wait()
        answer = self.respond(body)
        headers = [("Content-Type", "application/ocsp-response"), ("Content-Length", str(len(answer))),
                   ("Connection", "close")]
        await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers)) or b"")
        await stream.send_all(conn.send(h11.Data(data=answer)) or b"")
        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")


def _unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(serialization.Encoding.DER)


def run_from_args(args: argparse.Namespace) -> int:
    """``siptap certs ocsp``: serve until Ctrl-C (the CLI turns a bad folder into one error line)."""
    from siptap.config.loader import Loader

    listen = Loader(Path("--listen"), default_port=8888).endpoint(args.listen, "--listen", default_port=8888)
    if args.validity <= 0 or args.delay < 0:
        print("siptap: error: --validity must be positive and --delay not negative", file=sys.stderr)
        return 2
    responder = LabOcspResponder(args.dir, validity=timedelta(minutes=args.validity), delay=args.delay,
                                 report=lambda line: print(line, flush=True))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(responder.serve, listen.host, listen.port)
            host = f"[{listen.host}]" if ":" in listen.host else listen.host
            print(f"lab OCSP responder for {responder.ca.subject.rfc4514_string()} on http://{host}:{port}/ "
                  f"(revoked: what {args.dir / 'crl.pem'} lists; answers valid {args.validity:g} min)", flush=True)

    trio.run(main)
    return 0
