"""The operator freezes what it loaded before serving: the collector's full passes skip it."""

from __future__ import annotations

import gc
import weakref

from trainguard.cli.main import freeze_loaded_objects


class _Node:
    def __init__(self) -> None:
        self.peer: _Node | None = None


def test_loaded_objects_are_frozen_and_garbage_is_not() -> None:
    kept, garbage = _Node(), _Node()
    garbage.peer = _Node()
    garbage.peer.peer = garbage  # a cycle: only the collector frees it
    gone = weakref.ref(garbage)
    del garbage
    try:
        freeze_loaded_objects()
        assert gone() is None, "garbage loaded before the freeze would be kept for ever"
        assert gc.get_freeze_count() > 0
        assert kept not in gc.get_objects(), "a live object loaded before the freeze is still tracked"
    finally:
        gc.unfreeze()
    assert any(obj is kept for obj in gc.get_objects())
