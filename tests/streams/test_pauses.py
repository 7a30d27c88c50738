"""The worker's GC pause and event-loop stall figures, and the start-up heap freeze."""

from __future__ import annotations

import gc

from streams.pauses import GcPauses, freeze_startup_heap


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
        # Frozen objects that die later leave the permanent generation: never more than were frozen.
        assert 1000 < gc.get_freeze_count() <= frozen  # pytest, this package, the interpreter
        assert sum(gc.get_count()) < frozen
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0


def test_a_blocked_event_loop_is_seen_as_a_stall() -> None:
    import asyncio
    import time

    from streams.pauses import LoopStalls

    stalls = LoopStalls()
    done = False

    async def main() -> None:
        nonlocal done
        watcher = asyncio.create_task(stalls.watch(lambda: done))
        await asyncio.sleep(0.05)
        time.sleep(0.08)  # blocks the loop, as a long synchronous step would
        await asyncio.sleep(0.03)
        done = True
        await watcher

    asyncio.run(main())
    figures = stalls.take()
    assert 60.0 <= figures["loop_stall_longest_ms"] < 1000.0 and figures["loop_stalls_over_20ms"] >= 1
    assert stalls.take()["loop_stall_longest_ms"] == 0.0


def test_a_stuck_loop_is_reported_with_the_stack_that_holds_it(caplog) -> None:
    import asyncio
    import logging
    import time

    from streams.pauses import LoopStalls

    stalls = LoopStalls(report_over_ms=30)
    done = False

    def long_synchronous_step() -> None:
        time.sleep(0.2)

    async def main() -> None:
        nonlocal done
        watcher = asyncio.create_task(stalls.watch(lambda: done))
        await asyncio.sleep(0.05)
        long_synchronous_step()
        await asyncio.sleep(0.03)
        done = True
        await watcher

    with caplog.at_level(logging.WARNING, logger="streams.pauses"):
        asyncio.run(main())
    reports = [r.getMessage() for r in caplog.records if "event loop stuck" in r.getMessage()]
    assert len(reports) == 1 and "long_synchronous_step" in reports[0], reports
    assert stalls.report_over_ms == 0.0  # the reporter thread ends with the watch


def test_freezing_without_a_collection_leaves_the_collector_alone() -> None:
    pauses = GcPauses().install()
    gc.disable()  # no automatic collection in between: any collection counted is the freeze's
    try:
        frozen = freeze_startup_heap(collect=False)
        assert 0 < gc.get_freeze_count() <= frozen
        assert pauses.take()["gc_collections"] == 0
        freeze_startup_heap()
        assert pauses.take()["gc_collections"] == 1
    finally:
        gc.enable()
        pauses.uninstall()
        gc.unfreeze()
