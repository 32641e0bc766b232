"""Writing the bundle: the folder (staged in a 0700 sibling, files 0600: it holds keys, then renamed) and its ``.tar.gz``."""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from siptap.tools.export.bundle import BUNDLE_FILES, Bundle
from siptap.tools.export.errors import ExportError


def write_bundle(bundle: Bundle, out: Path, *, force: bool = False) -> Path:
    """Write the folder and ``<out>.tar.gz``; returns the archive's path."""
    out = out.resolve() if not out.is_absolute() else out
    archive = out.with_name(out.name + ".tar.gz")
    if out.exists() or out.is_symlink():
        if not force:
            raise ExportError(f"{out} already exists", "choose another --out, or add --force to replace it")
        if not out.is_dir() or out.is_symlink() or any(p.name not in BUNDLE_FILES for p in out.iterdir()):
            raise ExportError(f"{out} is not a siptap bundle folder: not replacing it, even with --force")
    if archive.exists() and not force:
        raise ExportError(f"{archive} already exists", "choose another --out, or add --force to replace it")
    out.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # created for the bundle: no wider than it
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))  # 0700
    try:
        for name, data in bundle.files.items():
            fd = os.open(staging / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        tmp_archive = staging.with_name(staging.name + ".tar.gz")
        fd = os.open(tmp_archive, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as fh, tarfile.open(fileobj=fh, mode="w:gz") as tar:
            tar.add(staging, arcname=out.name)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
        os.replace(tmp_archive, archive)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        staging.with_name(staging.name + ".tar.gz").unlink(missing_ok=True)
        raise
    return archive
