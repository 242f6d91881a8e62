"""The heap of a long-running process (the web app, a model editor's job)."""

from __future__ import annotations

import gc
from functools import cache


@cache  # once per process (tests start many apps and run many jobs in one)
def freeze_startup_heap() -> None:
    """Everything loaded by now (modules, ORM mappers, routes, tokenizers) lives as long as the process: take
    it out of the cyclic garbage collector's view, after collecting what is already garbage. Otherwise
    every full collection walks all of it and stops the process for 70-110 ms, which was the web's slowest
    request of a busy minute, and the collection at exit takes a third of a second."""
    gc.collect()
    gc.freeze()
