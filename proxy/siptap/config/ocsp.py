"""The OCSP keys of a TLS leg (``ocsp``, ``ocsp_url``, ``ocsp_timeout``) and their checks.

Shared by :class:`~siptap.config.routes.ServerTlsSettings` (the client's certificate) and
:class:`~siptap.config.routes.ClientTlsSettings` (the server's); :mod:`siptap.tls.ocsp_check`
applies them.
"""

from __future__ import annotations

import urllib.parse

OCSP_POLICIES = ("off", "soft", "hard")
DEFAULT_OCSP_TIMEOUT = 3.0
MAX_OCSP_TIMEOUT = 60.0


def ocsp_problems(policy: str, url: str | None, timeout: float, *, verifying: bool,
                  verify_key: str) -> list[tuple[str, str]]:
    """``(key, problem)`` pairs for a leg's OCSP keys; ``verifying``: the leg verifies its
    peer's certificate (named by ``verify_key``), which OCSP needs."""
    out: list[tuple[str, str]] = []
    if policy != "off" and not verifying:
        out.append(("ocsp", f"OCSP checks the peer's verified certificate: it needs {verify_key} = true"))
    if url:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            out.append(("ocsp_url", f"{url!r} is not an http:// URL (OCSP responders serve plain HTTP; "
                                    "e.g. \"http://ocsp.example.net/\")"))
        else:
            try:
                parts.port  # noqa: B018 - urlsplit checks the port only when it is read
            except ValueError:
                out.append(("ocsp_url", f"{url!r}: bad port"))
    if not 0 < timeout <= MAX_OCSP_TIMEOUT:
        out.append(("ocsp_timeout", f"must be more than 0 and at most {MAX_OCSP_TIMEOUT:g} seconds"))
    return out
