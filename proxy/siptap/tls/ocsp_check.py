"""A leg's OCSP policy: after the TLS handshake, before the connection is relayed.

OpenSSL's verify callback is synchronous, and asking a responder takes a network round trip,
so the check runs once the handshake is complete and before the session goes on (the customer
leg: before the core is dialled; the core leg: before that upstream is used). A refused peer
has completed TLS with us and is then closed; the log line and the metric are the same
``handshake_failed`` / ``siptap_handshakes_total{result="failed"}`` as for any other reason.
A slow responder delays only the handshake it is asked for, by at most ``ocsp_timeout``; the
relay's data path never waits for OCSP.

Where the answer comes from, in order: the peer's stapled response (the core leg asks for one
with status_request), the cache, the responder (``ocsp_url``, else the certificate's AIA).
Only answers that passed :func:`siptap.tls.ocsp.check_response` count; a good or revoked
answer is cached until its nextUpdate (bounded: the least recently used goes first; a reload
starts an empty cache). No usable answer is ``unavailable``: ``soft`` lets the peer in and
logs ``ocsp_unavailable`` (warning), ``hard`` refuses it with reason ``ocsp_unavailable``.
A revoked certificate is refused with ``ocsp_revoked`` under either policy.

A responder that could not be asked (unreachable, no answer within ``ocsp_timeout``, an HTTP
error) is not asked again for RETRY_AFTER seconds: the handshakes of that time get
``unavailable`` at once (source ``recent_failure``, the detail says when it failed and why)
instead of each waiting out its own timeout while the responder is down.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from OpenSSL import SSL

from siptap.config import ClientTlsSettings, ServerTlsSettings
from siptap.errors import HandshakeFailed
from siptap.log import LogWriter
from siptap.metrics import Metrics
from siptap.sansio.handshake import FailureReason
from siptap.tls.facts import ContextData, HandshakeObserver
from siptap.tls.ocsp import CertId, OcspAnswer, OcspInvalid, build_request, cert_id, check_response, responder_urls
from siptap.tls.ocsp_client import OcspUnavailable, fetch_ocsp
from siptap.tls.stream import OpenSSLStream

__all__ = ["OcspCache", "OcspChecker", "OcspOutcome", "checker_for", "request_staples"]

Fetch = Callable[[str, bytes], Awaitable[bytes]]

# Seconds a responder that could not be asked is left alone (module docstring). Short: under
# ``hard`` every handshake of that time is refused, and a responder back up should be used soon.
RETRY_AFTER = 15.0


class OcspCache:
    """Verified answers by CertID until their nextUpdate; at most ``maxsize`` of them."""

    def __init__(self, maxsize: int = 1024) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self.maxsize = maxsize
        self._entries: OrderedDict[CertId, OcspAnswer] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CertId, now: datetime) -> OcspAnswer | None:
        answer = self._entries.get(key)
        if answer is None:
            return None
        if answer.next_update is None or answer.next_update <= now:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return answer

    def put(self, key: CertId, answer: OcspAnswer, now: datetime) -> None:
        # No nextUpdate: "newer information is always available", so never reused.
        if answer.next_update is None or answer.next_update <= now:
            return
        self._entries[key] = answer
        self._entries.move_to_end(key)
        while len(self._entries) > self.maxsize:
            self._entries.popitem(last=False)


@dataclass(frozen=True, slots=True)
class OcspOutcome:
    result: str  # "good", "revoked" or "unavailable"
    source: str  # "staple", "cache", "responder" or "none"
    detail: str


@dataclass(slots=True)
class _Asking:
    """A request under way, and its outcome once it is known (None if it was cancelled)."""

    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    outcome: OcspOutcome | None = None


class OcspChecker:
    """One leg's OCSP check (``policy`` "soft" or "hard"; "off" builds no checker)."""

    def __init__(self, policy: str, *, url: str | None, timeout: float, route: str, leg: str,
                 metrics: Metrics | None = None, cache: OcspCache | None = None,
                 fetch: Fetch | None = None, clock: Callable[[], datetime] | None = None) -> None:
        if policy not in ("soft", "hard"):
            raise ValueError(f"policy must be soft or hard, not {policy!r}")
        self.policy = policy
        self.url = url or None
        self.timeout = timeout
        self.route = route
        self.leg = leg
        self.metrics = metrics
        self.cache = cache if cache is not None else OcspCache()
        self._fetch = fetch or self._post
        self._clock = clock or (lambda: datetime.now(UTC))
        # One request per certificate at a time: a trunk whose connections all come back at
        # once (siptap restarted, a failover) asks the responder once, and the others share
        # its outcome, good or not, instead of each sending the same request (and, with a
        # responder down, each waiting out its own timeout in turn).
        self._asking: dict[CertId, _Asking] = {}
        # Each checked certificate's issuer, by the certificate's SHA-256: a resumed session
        # brings only the peer's certificate (no verified chain), and its issuer is the one
        # found when that session's full handshake was checked, in this process (a session
        # or ticket never outlives its context, nor this checker built with it).
        self._issuers: OrderedDict[bytes, x509.Certificate] = OrderedDict()
        # Responders that could not be asked: URL -> (trio time of the failure, why). One entry
        # per URL (a route names one ocsp_url, or its CA's AIA ones): no bound needed.
        self._failed: dict[str, tuple[float, str]] = {}

    async def _post(self, url: str, request: bytes) -> bytes:
        return await fetch_ocsp(url, request, timeout=self.timeout)

    async def status(self, chain: Sequence[x509.Certificate], staple: bytes | None) -> OcspOutcome:
        """What OCSP says about ``chain[0]`` (issued by ``chain[1]``); never raises for the
        responder's or the peer's behaviour."""
        chain = self._with_issuer(chain)
        if len(chain) < 2:
            return OcspOutcome("unavailable", "none", "no issuer certificate in the verified chain to ask about")
        leaf, issuer = chain[0], chain[1]
        key = cert_id(leaf, issuer)
        problems: list[str] = []
        if staple:
            try:
                answer = check_response(staple, leaf, issuer, now=self._clock())
            except OcspInvalid as exc:
                problems.append(f"stapled response unusable: {exc}")
            else:
                if answer.status != "unknown":
                    self.cache.put(key, answer, self._clock())
                    return OcspOutcome(answer.status, "staple", f"stapled: {answer.describe()}")
                problems.append("stapled response: status unknown")
        while (asking := self._asking.get(key)) is not None:
            await asking.done.wait()  # bounded: the request under way has its own timeout
            if asking.outcome is not None:
                return asking.outcome
            # The asking handshake was cancelled (its connection went away): ask anew.
        cached = self.cache.get(key, self._clock())
        if cached is not None:
            return OcspOutcome(cached.status, "cache", f"cached until {cached.next_update:%Y-%m-%d %H:%M:%S} UTC: "
                               f"{cached.describe()}")
        self._asking[key] = asking = _Asking()
        try:
            asking.outcome = await self._ask(leaf, issuer, key, problems)
            return asking.outcome
        finally:
            del self._asking[key]
            asking.done.set()

    def _with_issuer(self, chain: Sequence[x509.Certificate]) -> Sequence[x509.Certificate]:
        """``chain``, completed with the remembered issuer when it is the leaf alone (a resumed
        session); a full chain's issuer is remembered (bounded like the cache)."""
        if not chain:
            return chain
        fingerprint = chain[0].fingerprint(hashes.SHA256())
        if len(chain) >= 2:
            self._issuers[fingerprint] = chain[1]
            self._issuers.move_to_end(fingerprint)
            while len(self._issuers) > self.cache.maxsize:
                self._issuers.popitem(last=False)
            return chain
        issuer = self._issuers.get(fingerprint)
        return [chain[0], issuer] if issuer is not None else chain

    async def _ask(self, leaf: x509.Certificate, issuer: x509.Certificate, key: CertId,
                   problems: list[str]) -> OcspOutcome:
        url = self.url or next(iter(responder_urls(leaf)), None)
        if url is None:
            problems.append("the certificate names no OCSP responder (AIA) and ocsp_url is not set")
            return OcspOutcome("unavailable", "none", "; ".join(problems))
        failed = self._failed.get(url)
        if failed is not None:
            ago = trio.current_time() - failed[0]
            if ago < RETRY_AFTER:
                problems.append(f"{failed[1]} ({ago:.1f} s ago; not asked again until {RETRY_AFTER:g} s have passed)")
                return OcspOutcome("unavailable", "recent_failure", "; ".join(problems))
            del self._failed[url]
        try:
            der = await self._fetch(url, build_request(leaf, issuer))
            answer = check_response(der, leaf, issuer, now=self._clock())
        except OcspUnavailable as exc:
            self._failed[url] = (trio.current_time(), str(exc))
            problems.append(str(exc))
            return OcspOutcome("unavailable", "responder", "; ".join(problems))
        except OcspInvalid as exc:
            # The responder answered: asked again next time (the answer may be about this
            # certificate only, or the responder's clock may be fixed by then).
            problems.append(f"{url}: {exc}")
            return OcspOutcome("unavailable", "responder", "; ".join(problems))
        if answer.status == "unknown":
            problems.append(f"{url}: the responder does not know this certificate (status unknown)")
            return OcspOutcome("unavailable", "responder", "; ".join(problems))
        self.cache.put(key, answer, self._clock())
        return OcspOutcome(answer.status, "responder", f"{url}: {answer.describe()}")

    async def enforce(self, stream: OpenSSLStream, log: LogWriter) -> None:
        """Check the peer of a handshaken ``stream``: return to let it in, raise HandshakeFailed
        (``ocsp_revoked``, or ``ocsp_unavailable`` under ``hard``) to refuse it."""
        chain = stream.verified_chain()
        staple, stream.ocsp_staple = stream.ocsp_staple, None  # not kept for the connection's life
        outcome = await self.status(chain, staple)
        whose = "client" if stream.server_side else "server"
        subject = chain[0].subject.rfc4514_string() if chain else "?"
        result = outcome.result
        if result == "unavailable":
            result += "_refused" if self.policy == "hard" else "_allowed"
        if self.metrics is not None:
            self.metrics.child(self.metrics.ocsp_checks, self.route, self.leg, result, outcome.source).inc()
        if outcome.result == "revoked":
            raise HandshakeFailed(FailureReason.OCSP_REVOKED.value, f"{whose} certificate {subject}: {outcome.detail}")
        if outcome.result == "unavailable":
            if self.policy == "hard":
                raise HandshakeFailed(FailureReason.OCSP_UNAVAILABLE.value,
                                      f"{whose} certificate {subject}: no OCSP answer ({outcome.detail}); "
                                      "ocsp = \"hard\" refuses it")
            log.warning("ocsp_unavailable", leg=self.leg, policy="soft", action="allowed", subject=subject,
                        detail=outcome.detail)
            return
        log.debug("ocsp_good", leg=self.leg, subject=subject, source=outcome.source, detail=outcome.detail)


def checker_for(settings: ServerTlsSettings | ClientTlsSettings, *, route: str, leg: str,
                metrics: Metrics | None = None) -> OcspChecker | None:
    """The leg's checker, or None when its ``ocsp`` is "off" (the default)."""
    if settings.ocsp == "off":
        return None
    return OcspChecker(settings.ocsp, url=settings.ocsp_url, timeout=settings.ocsp_timeout, route=route, leg=leg,
                       metrics=metrics)


def _keep_staple(conn: SSL.Connection, staple: bytes, data: object) -> bool:
    # Only kept here; judged after the handshake with everything else (OcspChecker.status), so
    # a missing or bad staple falls back to the responder instead of failing the handshake.
    observer = conn.get_app_data()
    if isinstance(observer, HandshakeObserver) and staple:
        observer.ocsp_staple = bytes(staple)
    return True


def request_staples(ctx: SSL.Context) -> None:
    """Make a client context ask for the server's stapled OCSP response (status_request) and
    keep it on each connection's observer (pyOpenSSL's OCSP client callback)."""
    ctx.set_ocsp_client_callback(_keep_staple)
    data = ctx.get_app_data()
    if isinstance(data, ContextData):
        ctx.set_app_data(dataclasses.replace(data, request_ocsp=True))
