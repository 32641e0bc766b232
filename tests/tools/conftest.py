"""Fixtures of the tools' tests: real captures shared by `siptap calls` and the export selector tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.tools.call_lab import CallLab, make_call_lab


@pytest.fixture(scope="session")
def call_lab(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> CallLab:
    return trio.run(make_call_lab, pki, tmp_path_factory.mktemp("call-lab"))
