"""Adaptive batching of model calls inside one service process.

Concurrent requests each submit their windows; one drain loop runs the model on everything that is
waiting, in a worker thread, and hands each request its rows. While a call runs, new requests queue
up, so batches grow with the load without any fixed wait: an idle service calls the model at once,
and a busy one calls it once per batch. This replaces a separate batching service reached over
HTTP, which cost one extra HTTP round trip per request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


@dataclass
class _Pending:
    windows: np.ndarray
    future: asyncio.Future


class AdaptiveBatcher:
    """Coalesce concurrent ``submit`` calls into batched calls of ``predict``.

    ``predict`` maps an array ``(n, ...)`` to an array whose first axis is also ``n``; it runs in
    a worker thread, one call at a time. ``on_batch(size)`` is called with the number of windows
    of every batch, for metrics. A failing batch fails every request in it and the next batch
    runs as usual.
    """

    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch_size: int = 2048,
        on_batch: Callable[[int], None] | None = None,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size is {max_batch_size}; it must be at least 1")
        self._predict = predict
        self._max_batch_size = max_batch_size
        self._on_batch = on_batch
        self._queue: list[_Pending] = []
        self._draining = False

    async def submit(self, windows: np.ndarray) -> np.ndarray:
        """Run ``predict`` on ``windows`` ``(n, ...)`` as part of a batch; returns its ``n`` rows."""
        loop = asyncio.get_running_loop()
        pending = _Pending(np.asarray(windows), loop.create_future())
        self._queue.append(pending)
        if not self._draining:
            self._draining = True
            loop.create_task(self._drain())
        return await pending.future

    def _take_batch(self) -> list[_Pending]:
        """Remove the oldest requests that fit in one batch (at least one, however large)."""
        batch = [self._queue.pop(0)]
        size = len(batch[0].windows)
        while self._queue and size + len(self._queue[0].windows) <= self._max_batch_size:
            item = self._queue.pop(0)
            size += len(item.windows)
            batch.append(item)
        return batch

    async def _drain(self) -> None:
        try:
            # Let requests that arrived in the same event-loop turn join the first batch.
            await asyncio.sleep(0)
            while self._queue:
                batch = self._take_batch()
                await self._run(batch)
        finally:
            self._draining = False

    async def _run(self, batch: list[_Pending]) -> None:
        stacked = np.concatenate([item.windows for item in batch])
        if self._on_batch is not None:
            self._on_batch(len(stacked))
        try:
            output = await asyncio.to_thread(self._predict, stacked)
        except Exception as error:  # noqa: BLE001  every waiting request must get the error
            logger.exception("model call on a batch of %d windows failed", len(stacked))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return

        start = 0
        for item in batch:
            end = start + len(item.windows)
            if not item.future.done():  # the request may have been cancelled meanwhile
                item.future.set_result(output[start:end])
            start = end
