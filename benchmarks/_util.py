"""Timing and recording shared by the benchmarks."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

from common.io.atomic import write_text_atomic

RESULTS = Path(__file__).resolve().parent / "results.json"
SHARED_DATA = Path(
    os.environ.get("SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


def best_time(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> float:
    """Best wall time of ``repeat`` calls in seconds, after ``warmup`` untimed calls (JIT, caches)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def record(figures: dict[str, float], title: str) -> None:
    """Print a table of the figures and merge them into benchmarks/results.json."""
    width = max(len(k) for k in figures)
    print(f"\n{title}")
    for name, value in figures.items():
        print(f"  {name:<{width}}  {value:>12.4g}")
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.update({k: round(float(v), 6) for k, v in figures.items()})
    results["_machine"] = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"
    )
    write_text_atomic(RESULTS, json.dumps(dict(sorted(results.items())), indent=2) + "\n")
