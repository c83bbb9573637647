"""Interleaved timing: a baseline and the product take turns on the same inputs, so load from other
processes on a shared machine hits both alike; medians and their ratio are what is reported."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Comparison:
    name: str
    baseline_ms: list[float]
    product_ms: list[float]

    @property
    def baseline_median(self) -> float:
        return float(np.median(self.baseline_ms))

    @property
    def product_median(self) -> float:
        return float(np.median(self.product_ms))

    @property
    def speedup(self) -> float:
        """How many times faster the product is (baseline median / product median)."""
        return self.baseline_median / self.product_median

    def row(self, unit: str = "ms") -> str:
        return (
            f"| {self.name} | {self.baseline_median:.1f} {unit} | {self.product_median:.1f} {unit} | "
            f"{self.speedup:.2f}x | n={len(self.product_ms)} |"
        )


def elapsed_ms(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000.0


def interleaved(
    name: str, baseline: Callable[[object], object], product: Callable[[object], object], inputs: Sequence, rounds: int = 1
) -> Comparison:
    """Time ``baseline(x)`` and ``product(x)`` alternately on every input, ``rounds`` times."""
    comparison = Comparison(name, [], [])
    for round_number in range(rounds):
        for i, x in enumerate(inputs):
            # alternate who goes first, so neither always runs on a warmer cache
            pair = [(comparison.baseline_ms, baseline), (comparison.product_ms, product)]
            for times, fn in pair if (i + round_number) % 2 == 0 else pair[::-1]:
                times.append(elapsed_ms(lambda fn=fn, x=x: fn(x)))
    return comparison


def table_header(baseline: str, product: str) -> str:
    return f"| measurement | {baseline} (median) | {product} (median) | speed-up | samples |\n|---|---|---|---|---|"
