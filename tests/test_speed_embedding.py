"""Embedding faster: faces from concurrent calls share one forward pass, with the same results."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from recognition.engine.embedding import FaceEmbedder, _CallBatcher
from recognition.engine.pipeline import shared_pipeline

from .conftest import PEOPLE


@pytest.fixture(scope="module")
def crops():
    from recognition.engine.images import decode_image

    pipe = shared_pipeline()
    images = [decode_image(p.read_bytes()) for p in sorted(PEOPLE.glob("*/*"))[:8]]
    return np.stack([pipe.analyse(rgb, max_faces=1)[0].crop for rgb in images])


@pytest.fixture(scope="module")
def batching():
    return FaceEmbedder(flip=shared_pipeline().embedder.flip, batch_across_calls=True)


def test_concurrent_calls_share_forward_passes_and_get_their_own_embeddings(crops, batching):
    embedder = batching
    alone = shared_pipeline().embedder.embed(crops)
    passes = []
    original = embedder._batcher._fn
    embedder._batcher._fn = lambda batch: passes.append(len(batch)) or original(batch)
    try:
        barrier = threading.Barrier(len(crops))

        def one(i):
            barrier.wait()
            return embedder.embed(crops[i : i + 1])[0]

        with ThreadPoolExecutor(len(crops)) as pool:
            together = np.stack(list(pool.map(one, range(len(crops)))))
    finally:
        embedder._batcher._fn = original
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert sum(passes) == len(crops) and len(passes) < len(crops), passes


def test_a_failing_batch_raises_in_the_caller_and_the_batcher_keeps_serving():
    calls = []

    def flaky(batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise ValueError("first one fails")
        return batch * 2

    batcher = _CallBatcher(flaky, max_batch=8)
    with pytest.raises(ValueError):
        batcher.run(np.ones((1, 2)))
    np.testing.assert_array_equal(batcher.run(np.ones((2, 2))), np.full((2, 2), 2.0))


def test_a_lone_call_through_the_batcher_gives_the_same_embeddings(crops, batching):
    assert shared_pipeline().embedder._batcher is None  # off by default (it did not pay here)
    np.testing.assert_allclose(batching.embed(crops[:3]), shared_pipeline().embedder.embed(crops[:3]), atol=1e-5)
