"""The in-process adaptive batcher: coalescing, order, errors and size limits."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from spot_forecast.batching import AdaptiveBatcher


class RecordingModel:
    """Doubles its input and records each call's batch size; can block until released."""

    def __init__(self, fail_on: int | None = None):
        self.sizes: list[int] = []
        self.fail_on = fail_on
        self.release = threading.Event()
        self.release.set()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.release.wait(timeout=5)
        self.sizes.append(len(batch))
        if self.fail_on is not None and len(self.sizes) == self.fail_on:
            raise RuntimeError("model failed")
        return batch * 2


def test_concurrent_submits_share_calls():
    model = RecordingModel()
    batcher = AdaptiveBatcher(model)

    async def run():
        return await asyncio.gather(*(batcher.submit(np.full((1, 3), i)) for i in range(20)))

    results = asyncio.run(run())
    assert sum(model.sizes) == 20
    assert len(model.sizes) < 20
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result, np.full((1, 3), 2 * i))


def test_requests_queue_during_call():
    model = RecordingModel()
    batcher = AdaptiveBatcher(model)

    async def run():
        model.release.clear()
        first = asyncio.ensure_future(batcher.submit(np.zeros((1, 2))))
        await asyncio.sleep(0.05)  # the first call is now blocked inside the model
        later = [asyncio.ensure_future(batcher.submit(np.ones((1, 2)))) for _ in range(5)]
        await asyncio.sleep(0.05)
        model.release.set()
        return await first, await asyncio.gather(*later)

    asyncio.run(run())
    assert model.sizes == [1, 5]


def test_multi_row_requests_split_back():
    batcher = AdaptiveBatcher(RecordingModel())

    async def run():
        return await asyncio.gather(batcher.submit(np.arange(6).reshape(3, 2)),
                                    batcher.submit(np.arange(4).reshape(2, 2) + 100))

    first, second = asyncio.run(run())
    assert first.shape == (3, 2)
    assert second.shape == (2, 2)
    np.testing.assert_array_equal(second, (np.arange(4).reshape(2, 2) + 100) * 2)


def test_max_batch_size_respected():
    model = RecordingModel()
    batcher = AdaptiveBatcher(model, max_batch_size=4)

    async def run():
        await asyncio.gather(*(batcher.submit(np.zeros((1, 1))) for _ in range(10)))

    asyncio.run(run())
    assert max(model.sizes) <= 4
    assert sum(model.sizes) == 10


def test_failed_batch_fails_its_requests_only():
    model = RecordingModel(fail_on=1)
    batcher = AdaptiveBatcher(model)

    async def run():
        failing = asyncio.gather(*(batcher.submit(np.zeros((1, 1))) for _ in range(3)),
                                 return_exceptions=True)
        outcomes = await failing
        after = await batcher.submit(np.ones((1, 1)))
        return outcomes, after

    outcomes, after = asyncio.run(run())
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    np.testing.assert_array_equal(after, np.full((1, 1), 2.0))


def test_batch_sizes_reported():
    seen: list[int] = []
    batcher = AdaptiveBatcher(RecordingModel(), on_batch=seen.append)

    async def run():
        await asyncio.gather(*(batcher.submit(np.zeros((2, 1))) for _ in range(3)))

    asyncio.run(run())
    assert sum(seen) == 6


def test_zero_max_batch_rejected():
    with pytest.raises(ValueError, match="max_batch_size is 0"):
        AdaptiveBatcher(RecordingModel(), max_batch_size=0)
