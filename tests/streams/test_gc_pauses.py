"""The worker's GC pause figures and start-up heap freeze."""

from __future__ import annotations

import gc

from streams.gc_pauses import GcPauses, freeze_startup_heap


def test_every_collection_is_timed_and_take_resets() -> None:
    pauses = GcPauses().install()
    try:
        gc.collect(0)
        gc.collect(2)
        figures = pauses.take()
    finally:
        pauses.uninstall()
    assert pauses not in gc.callbacks
    assert figures["gc_collections"] >= 2 and figures["gc_total_ms"] >= 0.0
    assert figures["gc_longest_gen2_ms"] > 0.0  # a full collection of this test process takes time
    assert pauses.take()["gc_collections"] == 0


def test_freezing_moves_the_live_heap_out_of_later_collections() -> None:
    try:
        frozen = freeze_startup_heap()
        assert frozen == gc.get_freeze_count() > 1000  # pytest, this package, the interpreter
        assert sum(gc.get_count()) < frozen
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0
