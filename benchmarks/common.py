"""Timing and machine helpers shared by every benchmark."""
from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], device: torch.device, *, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_flops_per_second(device: torch.device, n: int = 2048) -> float:
    """The machine's measured dense float32 matmul throughput (FLOP/s): the yardstick for
    the arithmetic floor of a pass."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    seconds = median_seconds(lambda: a @ b, device, repeats=5, warmup=2)
    return 2 * n ** 3 / seconds


def describe_machine(device: torch.device) -> str:
    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    else:
        what = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    return f"{what}; torch {torch.__version__}; Python {platform.python_version()}"


@dataclass
class Row:
    """One line of a benchmark table: what was timed, vizcnn's time, the reference's, and
    the ratio (reference / vizcnn: above 1 means vizcnn is faster)."""

    bench: str
    case: str
    vizcnn_ms: float
    reference: str
    reference_ms: float
    target: str = ""
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        return self.reference_ms / self.vizcnn_ms if self.vizcnn_ms > 0 else float("inf")
