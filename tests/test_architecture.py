"""The rules of ARCHITECTURE.md that import-linter does not express, and proof that it does fire.

import-linter (``lint-imports``, run by tests/run before pytest) holds the layers; these tests
hold the rest: module size, the mirror's sinks standing alone, no private attribute read across
modules, the package's name, and a deliberately wrong arrow being caught.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "proxy" / "siptap"
MAX_LINES = 600
SINKS = ("hep", "jsonl", "keylog", "pcap", "srtp")


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _imported_modules(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_module_exceeds_600_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_no_sink_imports_another_sink() -> None:
    offenders = []
    for sink in SINKS:
        path = PACKAGE / "mirror" / f"{sink}.py"
        imported = _imported_modules(ast.parse(path.read_text()))
        others = {f"siptap.mirror.{other}" for other in SINKS if other != sink}
        offenders += [f"mirror/{sink}.py -> {name}" for name in sorted(imported & others)]
    assert not offenders


def _private_reads_across_objects(tree: ast.AST) -> list[tuple[int, str]]:
    """``x._name`` where ``x`` is not ``self``/``cls`` and ``_name`` is not a dunder.

    A class's own private attributes reached through ``self`` are its business; reaching into
    another object's (``sink._queue``) couples two modules through a name neither exported.
    Module-level private names (``module._helper``) count too. ``other._x`` where ``other`` is an
    instance of the same class (``__eq__``-style code) is allowed by naming it ``other``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in {"self", "cls", "other"}:
                continue
            found.append((node.lineno, ast.unparse(node)))
    return found


@pytest.mark.parametrize("layer", ["mirror", "relay", "sansio", "config"])
def test_no_private_attribute_read_across_modules(layer: str) -> None:
    offenders = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for line, expr in _private_reads_across_objects(ast.parse(path.read_text())):
            offenders.append(f"{path.relative_to(ROOT)}:{line}: {expr}")
    assert not offenders, "\n".join(offenders)


def test_package_is_siptap_and_proxy_is_not_importable(tmp_path: Path) -> None:
    """Outside the repository (where proxy/ is only a source folder), ``siptap`` imports and
    ``proxy`` does not: the name no longer clashes with the proxy.py distribution."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = "import importlib.util, siptap; print(siptap.__file__); print(importlib.util.find_spec('proxy'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[0].endswith(os.path.join("siptap", "__init__.py"))
    assert out[1] == "None"
    version = subprocess.run([sys.executable, "-m", "siptap", "--version"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, check=True)
    assert "siptap" in version.stdout + version.stderr


def test_import_linter_catches_a_wrong_arrow(tmp_path: Path) -> None:
    """The gate is live: a copy of the package with one upward import (sansio -> tls) fails
    ``lint-imports``, and the unmodified copy passes."""
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("lint-imports is not installed in this environment (pip install -e '.[test]')")
    copy = tmp_path / "src"
    shutil.copytree(PACKAGE, copy / "siptap", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    env = {**os.environ, "PYTHONPATH": str(copy)}

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(lint), "--no-cache"], cwd=tmp_path, env=env, capture_output=True, text=True)

    clean = run()
    assert clean.returncode == 0, clean.stdout + clean.stderr
    wrong = copy / "siptap" / "sansio" / "wrong_arrow.py"
    wrong.write_text("from siptap.tls import stream  # an upward import: must fail the build\n")
    broken = run()
    assert broken.returncode != 0
    assert "siptap.sansio.wrong_arrow -> siptap.tls" in broken.stdout, broken.stdout
