"""siptap run freezes what start-up built out of the cyclic collector's sight."""

from __future__ import annotations

import gc

from siptap.cli import settle_heap


def test_settle_heap_freezes_what_exists_now() -> None:
    try:
        before = gc.get_freeze_count()
        startup_object = {"built": "at start-up"}  # a tracked container, alive from now on
        settle_heap()
        assert gc.get_freeze_count() > before
        assert not any(obj is startup_object for obj in gc.get_objects())  # frozen: no longer scanned
    finally:
        gc.unfreeze()
