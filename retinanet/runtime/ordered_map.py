"""Work on a stream of items in a few threads, in order, never far ahead of its consumer.

`concurrent.futures`' `Executor.map` submits every item at once: an error in the first result
leaves the rest to run to the end (the pool waits for them), decoding thousands of files after
the one that should have stopped the run. Here at most `ahead` items are in flight, and closing
the stream (its consumer raised, or broke off) cancels those that have not started.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def ordered_map(function: Callable[[Item], Result], items: Iterable[Item], *, num_workers: int,
                ahead: int) -> Iterator[Result]:
    """Yield `function(item)` for each item, in order, computed in `num_workers` threads with at most
    `ahead` (>= 1) items submitted beyond the one being yielded. An exception of `function` is
    raised at its item's place. Use it under `contextlib.closing` so that a consumer that stops
    early cancels the items not started at once (only the running ones, at most `num_workers`, finish)."""
    items = iter(items)
    with ThreadPoolExecutor(num_workers) as pool:
        pending = deque(pool.submit(function, item) for item in itertools.islice(items, ahead))
        try:
            while pending:
                result = pending.popleft().result()
                pending.extend(pool.submit(function, item) for item in itertools.islice(items, 1))
                yield result
        finally:
            for future in pending:
                future.cancel()
