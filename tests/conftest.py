"""Shared fixtures: one lab PKI per test session (RSA key generation is the slow part)."""

from __future__ import annotations

from pathlib import Path

import pytest

from siptap.tools.pki import init_lab_pki, issue_leaf


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lab PKI (`siptap certs init`) plus the odd leaves the failure matrices need."""
    directory = tmp_path_factory.mktemp("pki")
    init_lab_pki(directory)
    issue_leaf(directory, "expired", usage="client", expired=True)
    issue_leaf(directory, "future", usage="client", not_yet_valid=True)
    issue_leaf(directory, "serveronly", usage="server")
    issue_leaf(directory, "foreign", usage="client", self_ca="foreign-ca")
    issue_leaf(directory, "foreign-core", usage="server", self_ca="foreign-ca2")
    issue_leaf(directory, "other-customer", usage="client")
    issue_leaf(directory, "ec-server", usage="server", key_type="ec")
    return directory
