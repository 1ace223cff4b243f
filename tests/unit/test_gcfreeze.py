"""freeze_startup_objects: garbage is collected first, what is alive is frozen."""

from __future__ import annotations

import gc
import weakref

from atoll.gcfreeze import freeze_startup_objects


class Node:
    other: Node | None = None


def test_garbage_is_collected_and_live_objects_are_frozen() -> None:
    live = [[i] for i in range(1000)]  # lists are tracked by the collector
    cycle = Node()
    cycle.other = cycle
    dead = weakref.ref(cycle)
    del cycle
    before = gc.get_freeze_count()
    try:
        frozen = freeze_startup_objects("test")
        assert dead() is None  # the cycle was collected, not frozen forever
        assert frozen == gc.get_freeze_count() >= before + len(live)
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0 and len(live) == 1000
