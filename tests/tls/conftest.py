"""Shared by the stream tests: siptap's server context and a customer's client context (TLS 1.2,
AES256-GCM-SHA384) from the session's lab PKI."""

from __future__ import annotations

from pathlib import Path

import pytest
from OpenSSL import SSL

from siptap.config import ClientTlsSettings, ServerTlsSettings
from siptap.tls.contexts import build_client_context, build_server_context


@pytest.fixture(scope="module")
def contexts(pki: Path) -> tuple[SSL.Context, SSL.Context]:
    server = build_server_context(
        ServerTlsSettings(cert=pki / "proxy-server.pem", key=pki / "proxy-server.key", client_ca=pki / "ca.pem")
    )
    client = build_client_context(
        ClientTlsSettings(
            cert=pki / "customer.pem", key=pki / "customer.key", ca=pki / "ca.pem", server_name="localhost",
            ciphers="AES256-GCM-SHA384", max_version="TLSv1.2",
        )
    )
    return server, client
