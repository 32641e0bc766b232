"""Fuzzing in the test suite: every corpus file through every harness (regression inputs),
and a short coverage-guided atheris run per target (bounded; longer runs by hand, see
``run_atheris.py``).

Budget: ``SIPTAP_FUZZ_SECONDS`` (default 48) CPU-seconds in total, shared equally by the
targets, run in parallel on up to ``os.cpu_count()`` processes: about 30 s of wall time on a
2-core machine. ``SIPTAP_FUZZ_SECONDS=0`` skips the atheris run. Without atheris installed the
run is skipped, except in CI (``CI=true``) where atheris is part of the ``test`` extra and its
absence is a set-up bug.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS

HERE = Path(__file__).parent
CORPUS = HERE / "corpus"
PROJECT = HERE.parent.parent
TEXT_TARGETS = {"sip_framer", "sip_message", "sdp_crypto"}

CORPUS_FILES = sorted(p for p in CORPUS.rglob("*") if p.is_file())


def test_every_target_has_a_seed_corpus() -> None:
    for target in TARGETS:
        assert any((CORPUS / target).iterdir()), f"no seed corpus for {target}"
    assert 20 <= len(CORPUS_FILES) <= 80, "keep the committed corpus small (a few dozen files)"
    assert all(p.stat().st_size <= 16384 for p in CORPUS_FILES), "keep corpus files small"


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: str(p.relative_to(CORPUS)))
def test_corpus_file_through_every_harness(path: Path) -> None:
    """Seeds and regression inputs (``crash-*``/``regress-*``) of any target are valid input
    for every harness: each harness must hold its contract on all of them."""
    data = path.read_bytes()
    for name, harness in TARGETS.items():
        try:
            harness(data)
        except Exception as exc:  # report which harness, not only the traceback
            raise AssertionError(f"harness {name} broke on {path.relative_to(CORPUS)}: {exc!r}") from exc


def _atheris_available() -> bool:
    return importlib.util.find_spec("atheris") is not None


def _budget() -> float:
    return float(os.environ.get("SIPTAP_FUZZ_SECONDS", "48"))


def _fuzz(target: str, seconds: int, scratch: Path) -> tuple[str, int, str, list[Path]]:
    work, artifacts = scratch / target / "work", scratch / target / "artifacts"
    work.mkdir(parents=True)
    artifacts.mkdir(parents=True)
    command = [
        sys.executable, "-m", "tests.fuzz.run_atheris", target,
        f"-max_total_time={seconds}", "-timeout=20", "-rss_limit_mb=1024", "-print_final_stats=1",
        f"-artifact_prefix={artifacts}/",
        *([f"-dict={HERE / 'sip.dict'}"] if target in TEXT_TARGETS else []),
        str(work), str(CORPUS / target),  # new inputs go to the scratch folder only
    ]  # fmt: skip
    result = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, timeout=seconds + 120)
    return target, result.returncode, result.stderr[-4000:], sorted(artifacts.iterdir())


def test_atheris_finds_nothing_within_the_budget(tmp_path: Path) -> None:
    if _budget() <= 0:
        pytest.skip("SIPTAP_FUZZ_SECONDS=0")
    if not _atheris_available():
        if os.environ.get("CI") == "true":
            raise RuntimeError("atheris is missing in CI: it is in the 'test' extra of pyproject.toml")
        pytest.skip("atheris not installed (pip install -e '.[test]')")
    workers = max(1, min(os.cpu_count() or 1, len(TARGETS)))
    # Wall seconds per target so that the CPU time of all targets is about the budget.
    seconds = max(2, round(_budget() / len(TARGETS)))
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda t: _fuzz(t, seconds, tmp_path), TARGETS))
    failures = []
    for target, code, stderr, artifacts in results:
        if code != 0 or artifacts:
            kept = []
            for artifact in artifacts:  # keep them where a developer finds them after the run
                shutil.copy(artifact, tmp_path / f"{target}-{artifact.name}")
                kept.append(str(tmp_path / f"{target}-{artifact.name}"))
            failures.append(f"--- {target}: exit {code}, inputs {kept}\n{stderr}")
        else:
            assert "Done " in stderr, stderr  # it really ran
    assert not failures, "atheris found crashes (add each input to tests/fuzz/corpus/<target>/):\n" + "\n".join(
        failures)
