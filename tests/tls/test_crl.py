"""CRL checking on both legs, over real loopback sockets: `crl` on the customer leg (leaf and
chain modes), on the core leg, and what happens for a CA in the bundle that has no CRL. Start-up
refusals (bad, foreign-signed, expired CRL files) are in tests/test_crl.py."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio

from siptap.errors import CertificateError, HandshakeFailed
from siptap.tls.contexts import build_server_context, load_crls_for
from siptap.tools.pki import issue_leaf, revoke, write_crl
from tests.tls.helpers import core_server_context, customer_client_context
from tests.tls.test_client_leg import client_settings, dial, run_core
from tests.tls.test_server_leg import (
    OneShotServer,
    client_attempt,
    server_settings,
    start,
)


@pytest.fixture(scope="module")
def revoking_pki(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session PKI with `revoked` and `core` on the lab CA's CRL."""
    directory = tmp_path_factory.mktemp("tls-crl") / "pki"
    shutil.copytree(pki, directory)
    issue_leaf(directory, "revoked", usage="client")
    revoke(directory, "revoked")
    revoke(directory, "core")
    return directory


async def outcome(settings: object, client_ctx: object) -> tuple[str, object]:
    server = OneShotServer(settings)  # type: ignore[arg-type]  # outcome() takes either leg's settings
    async with trio.open_nursery() as nursery:
        port = await start(nursery, server)
        result = await client_attempt(port, client_ctx)  # type: ignore[arg-type]  # an ssl.SSLContext, typed loosely above
        failure = await server.receive.receive()
        nursery.cancel_scope.cancel()
    return result, failure


@pytest.mark.parametrize("mode", ["leaf", "chain"])
async def test_customer_leg_revoked_refused_valid_admitted(revoking_pki: Path, mode: str) -> None:
    settings = server_settings(revoking_pki, crl=revoking_pki / "crl.pem", crl_check=mode)
    result, failure = await outcome(settings, customer_client_context(revoking_pki, cert="revoked"))
    assert result.startswith("error"), result
    assert isinstance(failure, HandshakeFailed) and failure.reason == "certificate_revoked", failure
    assert "CN=revoked" in failure.detail and "certificate revoked (X509 error 23)" in failure.detail
    result, facts = await outcome(settings, customer_client_context(revoking_pki))
    assert not result.startswith("error"), result
    assert facts.peer_chain[0].common_name == "customer"  # type: ignore[union-attr]  # facts or a failure; here facts


async def test_a_ca_without_a_crl_refuses_its_clients_as_crl_unusable(revoking_pki: Path, tmp_path: Path) -> None:
    """Two CAs trusted, a CRL for one: OpenSSL cannot check the other's clients (our fault, not
    theirs), and siptap says so with its own reason."""
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes((revoking_pki / "ca.pem").read_bytes() + (revoking_pki / "foreign-ca.pem").read_bytes())
    settings = server_settings(revoking_pki, client_ca=bundle, crl=revoking_pki / "crl.pem")
    result, failure = await outcome(settings, customer_client_context(revoking_pki, cert="foreign"))
    assert isinstance(failure, HandshakeFailed), (result, failure)
    assert failure.reason == "crl_unusable" and "unable to get certificate CRL (X509 error 3)" in failure.detail


async def test_core_leg_revoked_core_refused(revoking_pki: Path) -> None:
    async with trio.open_nursery() as nursery:
        port = await run_core(nursery, core_server_context(revoking_pki), [])
        stream = await dial(port, client_settings(revoking_pki, crl=revoking_pki / "crl.pem"))
        with pytest.raises(HandshakeFailed) as info:
            await stream.do_handshake(5)
        await stream.aclose()
        # Without the CRL the same core is fine.
        stream = await dial(port, client_settings(revoking_pki))
        facts = await stream.do_handshake(5)
        await stream.aclose()
        nursery.cancel_scope.cancel()
    assert info.value.reason == "certificate_revoked" and "CN=core" in info.value.detail
    assert facts.peer_chain[0].common_name == "core"


def test_crl_checks_at_load(revoking_pki: Path, tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    shutil.copytree(revoking_pki, pki)
    crl = pki / "crl.pem"
    assert len(load_crls_for(crl, pki / "ca.pem")) == 1
    with pytest.raises(CertificateError, match=r"is not signed by any CA in .*foreign-ca\.pem"):
        load_crls_for(crl, pki / "foreign-ca.pem")
    past = datetime.now(UTC) - timedelta(days=40)
    write_crl(pki, [], now=past, next_update=past + timedelta(days=30))
    with pytest.raises(CertificateError, match=r"expired on .* UTC \(nextUpdate\)") as info:
        build_server_context(server_settings(pki, crl=crl))
    assert info.value.path == str(crl)
    future = datetime.now(UTC) + timedelta(days=2)
    write_crl(pki, [], now=future)
    with pytest.raises(CertificateError, match=r"not valid before .*\(thisUpdate\)"):
        load_crls_for(crl, pki / "ca.pem")
    # Several CRLs in one file: each is checked, the bad one is named by its position.
    write_crl(pki, [])
    good = crl.read_bytes()
    crl.write_bytes(good + good.replace(b"MII", b"MIJ", 1))
    with pytest.raises(CertificateError, match=r"CRL #2"):
        load_crls_for(crl, pki / "ca.pem")
