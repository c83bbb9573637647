"""Kiosk capacity: live streams share the inference pool fairly, and the TFLite embedder the server
runs gives the Keras embedder's embeddings, from any number of threads at once.

The capacity figures themselves are measured through real server processes by
``manage.py benchmark --only kiosk`` (BENCHMARKS.md, "Kiosk capacity"); these tests check the
mechanisms cheaply, on real fixture faces. The TFLite model comes from the per-machine conversion
cache (TRAINING_CACHE_DIR), shared with the edge export's tests: it is converted once per machine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from checkin.scheduling import FairPool

from .conftest import PEOPLE
from .test_live_stream import OBAMA, communicator_for, open_with_consent, receive, run

# ---- the shared inference pool ---------------------------------------------------------------------


def test_pool_serves_connections_round_robin_so_a_busy_one_cannot_take_more_turns():
    """Three connections share one worker; "busy" asks again the instant its turn ends (a flooding
    camera), the others take a moment between frames. Every one gets a turn in each round."""
    pool = FairPool(1)
    grants: list[str] = []

    async def connection(name: str, turns: int, pause: float):
        for _ in range(turns):
            async with pool.turn():
                grants.append(name)
                await asyncio.sleep(0.01)  # the frame being analysed
            await asyncio.sleep(pause)

    async def scenario():
        await asyncio.gather(connection("busy", 12, 0.0), connection("a", 4, 0.001), connection("b", 4, 0.001))

    asyncio.run(scenario())
    first = grants[: grants.index("b", grants.index("a")) + 1]
    assert first.count("busy") <= 2, grants  # a and b each waited at most one busy turn to start
    # while a and b still have frames, busy never gets two turns in a row
    last_ab = max(i for i, g in enumerate(grants) if g != "busy")
    for i in range(1, last_ab):
        assert not (grants[i] == "busy" and grants[i - 1] == "busy"), grants
    assert grants.count("busy") == 12 and grants.count("a") == 4 and grants.count("b") == 4


def test_a_connection_that_leaves_while_waiting_gives_its_turn_on():
    pool = FairPool(1)

    async def scenario():
        async with pool.turn():
            waiting = asyncio.create_task(pool.turn().__aenter__())
            await asyncio.sleep(0)
            waiting.cancel()  # the socket closed while its frame waited
            await asyncio.sleep(0)
        async with asyncio.timeout(1):  # the slot is free again, not lost with the cancelled waiter
            async with pool.turn():
                return True

    assert asyncio.run(scenario())


@pytest.mark.django_db
def test_a_flooding_stream_does_not_starve_another_and_frames_run_one_at_a_time(plain_user, settings, monkeypatch):
    """Through the real consumer on real frames, one inference worker: stream A floods frames (far
    over any camera's rate), stream B sends one frame at a time. B is answered after at most two of
    A's frames each time, and never two frames are analysed at once."""
    from checkin.live import LiveSession

    settings.CHECKIN_INFERENCE_WORKERS = 1
    settings.CHECKIN_MAX_FPS = 1000.0
    settings.VISITORS_ENABLED = False
    analyse = LiveSession.analyse_frame
    running, peak = [0], [0]
    lock = threading.Lock()

    def counted(self, data, context):  # the real analysis, counting how many run at once
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            return analyse(self, data, context)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(LiveSession, "analyse_frame", counted)

    async def scenario():
        flooder, normal = communicator_for(plain_user), communicator_for(plain_user)
        await open_with_consent(flooder)
        await open_with_consent(normal)
        stop = asyncio.Event()
        flood_answers: list[int] = []

        async def flood():
            while not stop.is_set():
                await flooder.send_to(bytes_data=OBAMA)
                await asyncio.sleep(0.002)

        async def count_flood_answers():
            while True:
                message = await receive(flooder)
                if message["type"] == "faces":
                    flood_answers.append(message["frame"])

        tasks = [asyncio.create_task(flood()), asyncio.create_task(count_flood_answers())]
        while len(flood_answers) < 2:  # the flood is being served
            await asyncio.sleep(0.01)
        between = []
        for frame in range(1, 4):
            before = len(flood_answers)
            await normal.send_to(bytes_data=OBAMA)
            message = await receive(normal)
            while message["type"] != "faces":
                message = await receive(normal)
            assert message["frame"] == frame and message["faces"], message
            between.append(len(flood_answers) - before)
        stop.set()
        for task in tasks:
            task.cancel()
        await flooder.disconnect()
        await normal.disconnect()
        return between, flood_answers

    between, flood_answers = run(scenario)
    assert max(between) <= 2, between  # the normal stream waited at most ~one flood frame per frame
    assert peak[0] == 1  # one worker: the pool never ran two analyses at once
    assert flood_answers[-1] > len(flood_answers)  # the flood's stale frames were dropped, newest kept


@pytest.mark.django_db
def test_a_client_flooding_far_over_the_rate_limit_is_cut_off(plain_user, settings):
    """Refused frames still cost the event loop that serves everyone: past the allowed rate's worth of
    refused frames per second, over a few seconds, the socket is closed with a reason."""
    from checkin.consumers import CLOSE_TOO_MANY, flood_limit

    settings.CHECKIN_MAX_FPS = 2
    assert flood_limit(2) == 20

    async def scenario():
        communicator = communicator_for(plain_user)
        await open_with_consent(communicator)
        for _ in range(2 + flood_limit(2) + 1):  # the bucket's 2, then one more refusal than allowed
            await communicator.send_to(bytes_data=OBAMA)
        messages = []
        while True:
            output = await communicator.receive_output(timeout=60)
            if output["type"] == "websocket.close":
                return messages, output["code"]
            messages.append(json.loads(output["text"]))

    messages, code = run(scenario)
    assert code == CLOSE_TOO_MANY
    codes = [m["code"] for m in messages if m["type"] == "error"]
    assert codes == ["rate_limited", "flooding"], codes


# ---- the TFLite embedder ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fixture_crops():
    """Aligned crops of every face in the enrolled fixture photos (real faces)."""
    from recognition.pipelines import pipeline

    pipe = pipeline()
    crops = []
    for path in sorted(p for p in PEOPLE.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")):
        from recognition.engine.images import decode_image

        crops.extend(face.crop for face in pipe.analyse(decode_image(path.read_bytes()), max_faces=1))
    assert len(crops) >= 12
    return np.stack(crops)


@pytest.fixture(scope="module")
def lite_embedder():
    from django.conf import settings

    from recognition.engine.embedding_lite import LiteFaceEmbedder

    return LiteFaceEmbedder(settings.TRAINING_CACHE_DIR)


def test_tflite_runtime_gives_the_keras_embeddings_on_real_faces(fixture_crops, lite_embedder):
    """Against the Keras graph itself (embedding_graph: prewhiten, FaceNet, L2-normalise), run eagerly."""
    from recognition.engine.embedding import combine_flipped, embedding_graph

    plain = embedding_graph(lite_embedder.model, fixture_crops, False).numpy()
    mirrored = embedding_graph(lite_embedder.model, fixture_crops[:, :, ::-1], False).numpy()
    # recognition's embeddings, and verify's (flip test-time augmentation, as FaceEmbedder combines it)
    for flip, expected in ((False, plain), (True, combine_flipped(plain, mirrored))):
        got = lite_embedder.embed(fixture_crops, flip=flip)
        cosines = np.sum(expected * got, axis=1)
        assert cosines.min() > 0.9999, (flip, cosines.min())
        assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_served_pipeline_follows_the_runtime_setting(settings):
    from recognition.engine.embedding_lite import LiteFaceEmbedder
    from recognition.engine.pipeline import make_embedder
    from recognition.pipelines import pipeline, pipeline_config

    settings.FACE_EMBED_RUNTIME = "keras"
    keras_config = pipeline_config()
    settings.FACE_EMBED_RUNTIME = "tflite"
    assert (keras_config.embed_runtime, pipeline_config().embed_runtime) == ("keras", "tflite")
    # the runtime does not rename the embeddings: galleries stay valid when the setting changes
    assert keras_config.embedder_name == pipeline_config().embedder_name
    assert isinstance(pipeline().embedder, LiteFaceEmbedder)
    with pytest.raises(ValueError, match="embed_runtime"):
        make_embedder(dataclasses.replace(keras_config, embed_runtime="onnx"))


def test_prepare_models_loads_the_default_runtime_and_leaves_its_converted_file(settings):
    """``make run`` and the test script call it before any server starts: the default runtime is
    the TFLite one, its file is in the machine's cache, and the served pipeline is the one loaded."""
    import io

    from django.core.management import call_command

    from recognition.engine.embedding_lite import LiteFaceEmbedder, cached_path
    from recognition.engine.facenet import WEIGHTS_SHA256
    from recognition.pipelines import pipeline

    assert settings.FACE_EMBED_RUNTIME == "tflite"  # the default (tests do not set it)
    out = io.StringIO()
    call_command("prepare_models", "--embedder", "facenet", stdout=out)
    assert "tflite runtime" in out.getvalue() and out.getvalue().startswith("facenet")
    assert cached_path(WEIGHTS_SHA256, settings.TRAINING_CACHE_DIR, flip=False).is_file()
    assert isinstance(pipeline("facenet").embedder, LiteFaceEmbedder)


def test_threads_embedding_at_once_share_a_bounded_pool_of_interpreters_and_get_what_one_thread_gets(
    fixture_crops, lite_embedder, settings
):
    """An interpreter is not thread-safe and holds ~90 MB of packed weights: four threads embedding
    different batch sizes at once borrow from a pool of two (made at start, never more: the web
    worker's memory is bounded and flat however many threads embed) and get exactly the
    single-thread results. The pool is the product's one for every TFLite model (tflite_pool)."""
    from recognition.engine.embedding_lite import LiteFaceEmbedder
    from recognition.engine.tflite_pool import InterpreterPool

    pooled = LiteFaceEmbedder(settings.TRAINING_CACHE_DIR, max_interpreters=2)
    assert isinstance(pooled.pool, InterpreterPool) and (pooled.pool.size, pooled.pool.made) == (2, 2)
    halves = (fixture_crops[: len(fixture_crops) // 2], fixture_crops[len(fixture_crops) // 2 :])
    alone = [lite_embedder.embed(h) for h in halves] + [lite_embedder.embed(c[None]) for c in fixture_crops[:4]]
    start = threading.Barrier(4)

    def work(which: int):
        start.wait()
        results = []
        for _ in range(3):
            results.append(pooled.embed(halves[which % 2]))
            results.extend(pooled.embed(c[None]) for c in fixture_crops[:4])
        return results

    with ThreadPoolExecutor(4) as threads:
        outcomes = list(threads.map(work, range(4)))
    assert pooled.pool.made == 2  # made at start; four threads at once never made more
    for which, results in enumerate(outcomes):
        for r in range(3):
            batch, singles = results[5 * r], results[5 * r + 1 : 5 * r + 5]
            np.testing.assert_allclose(batch, alone[which % 2], atol=1e-6)
            for got, want in zip(singles, alone[2:]):
                np.testing.assert_allclose(got, want, atol=1e-6)
