"""A bounded pool of TFLite (LiteRT) interpreters over one converted model: how every TFLite model of
the product runs (FaceNet: ``embedding_lite``; dlib's ResNet: ``dlib_tf``; the edge export's embedder:
``training.engine.export``), and the per-machine cache of those conversions (``converted_once``).

An interpreter is not thread-safe, and each holds its own XNNPACK-packed weights and tensor arena
(a process grew ~100 MB per FaceNet interpreter, ~50 MB per dlib one), so the interpreters of a model form a bounded pool
(``size``, default: the cores, all made and warmed up at start): a call borrows one for its
duration and returns it; a thread finding all in use waits. Memory stays bounded however many
threads run the model (request threads, the live check-in pool, a default executor), and more
concurrent interpreters than cores would only share the same CPU. Before the pool, each thread
made its own interpreter: +271 MB under 16 concurrent clients for FaceNet (BENCHMARKS.md, "Kiosk
capacity"), and +795 MB for dlib's network under 16 threads embedding fused faces (BENCHMARKS.md,
"One bounded interpreter pool for every TFLite model").
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def converted_once(path: Path, convert: Callable[[], bytes], what: str) -> Path:
    """``path``, written from ``convert()`` (the .tflite bytes) only if it does not exist yet.

    A conversion costs seconds to minutes of CPU, so it is done once per machine: ``path`` names
    everything the result depends on (the weights' sha256, the TensorFlow version, the graph).
    Several processes starting on an empty cache (two web workers) convert once: the others wait
    on a file lock. ``what`` names the model in the log line."""
    import fcntl

    path = Path(path)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            started = time.perf_counter()
            data = convert()
            partial = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.part")
            partial.write_bytes(data)
            partial.replace(path)  # atomic: a reader never sees half a file
            log.warning("converted %s to TFLite in %.0f s (once per machine): %s", what, time.perf_counter() - started, path)
    return path


def default_threads() -> int:
    """Each interpreter's own CPU threads: the cores, as TensorFlow's own graphs use them (on a busy
    machine a one-thread interpreter did the same work in less CPU but got half the cores' time, so
    its calls took twice as long: BENCHMARKS.md, "Kiosk capacity")."""
    return os.cpu_count() or 1


class PooledInterpreter:
    """One TFLite interpreter and the batch size its tensors are allocated for."""

    def __init__(self, interpreter):
        self.interpreter = interpreter
        self.input = interpreter.get_input_details()[0]["index"]
        self.output = interpreter.get_output_details()[0]["index"]
        self.batch: int | None = None

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """(N, ...) inputs of the model's input dtype -> its first output, (N, ...), a copy."""
        if self.batch != len(inputs):
            self.interpreter.resize_tensor_input(self.input, list(inputs.shape))
            self.interpreter.allocate_tensors()
            self.batch = len(inputs)
        self.interpreter.set_tensor(self.input, inputs)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output).copy()


class InterpreterPool:
    """At most ``size`` interpreters of one model (default: the cores), made and warmed up (one
    all-zero input of batch 1) at construction, so that a process's memory is then what it will stay
    (made when two calls first overlapped, the second appeared as +200 MB of RSS mid-traffic) and no
    call pays for one. ``threads``: each interpreter's CPU threads (default: the cores).

    ``model``: a .tflite file (every interpreter maps the same file) or its bytes."""

    def __init__(self, model: Path | str | bytes, size: int | None = None, threads: int | None = None):
        self.model = model if isinstance(model, bytes) else Path(model)
        self.size = max(1, size or os.cpu_count() or 1)
        self.threads = threads or default_threads()
        self._slots = threading.BoundedSemaphore(self.size)
        self._idle: list[PooledInterpreter] = []  # last returned first: its memory is the warmest
        self._idle_lock = threading.Lock()
        self.made = 0
        for _ in range(self.size):
            item = self._new_interpreter()
            details = item.interpreter.get_input_details()[0]
            item.run(np.zeros([1, *details["shape"][1:]], details["dtype"]))
            self._idle.append(item)

    def _new_interpreter(self) -> PooledInterpreter:
        import warnings

        import tensorflow as tf

        with warnings.catch_warnings():
            # "tf.lite.Interpreter is deprecated" in favour of the ai_edge_litert package, which
            # is not a dependency here; the interpreter is the same (README, settings).
            warnings.simplefilter("ignore", UserWarning)
            if isinstance(self.model, bytes):
                interpreter = tf.lite.Interpreter(model_content=self.model, num_threads=self.threads)
            else:
                interpreter = tf.lite.Interpreter(model_path=str(self.model), num_threads=self.threads)
        with self._idle_lock:
            self.made += 1
        return PooledInterpreter(interpreter)

    @contextmanager
    def borrowed(self) -> Iterator[PooledInterpreter]:
        """An interpreter for this caller alone (several runs in a row may share it): an idle one,
        else wait for one to be returned."""
        self._slots.acquire()
        try:
            with self._idle_lock:
                item = self._idle.pop()  # as many slots as interpreters: one is idle
            try:
                yield item
            finally:
                with self._idle_lock:
                    self._idle.append(item)
        finally:
            self._slots.release()

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """One run on a borrowed interpreter (``PooledInterpreter.run``)."""
        with self.borrowed() as item:
            return item.run(inputs)
