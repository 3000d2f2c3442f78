"""The workers' garbage collector (issue 19.2): what the app holds once loaded is frozen
out of the collector's passes, and passes come every 50,000 allocations, not 700, so a
worker holding thousands of parked polls does not stop its event loop to walk them again
and again (cmdop_server.agent_api.asgi.tune_collector)."""

from __future__ import annotations

import gc

import pytest
from cmdop_server.agent_api.asgi import GC_YOUNG_THRESHOLD, tune_collector


def _walked(obj: object) -> bool:
    """Whether a collector pass would walk ``obj`` (frozen objects are in no generation)."""
    return any(o is obj for o in gc.get_objects())


@pytest.mark.unit
def test_the_loaded_app_is_frozen_and_passes_are_rare():
    thresholds = gc.get_threshold()
    loaded = {"a": [1, 2]}  # a container, as the app's modules, URLs and middleware are
    assert _walked(loaded)
    try:
        tune_collector()
        later = {"b": [3]}
        assert not _walked(loaded)
        assert _walked(later)  # what the requests make is still collected
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
