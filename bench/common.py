"""Shared helpers for the benchmarks: timing, medians, result files."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def timeit(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def write_results(name: str, data: dict[str, Any]) -> Path:
    """Write bench/results/<name>.json with the machine and date added."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {"benchmark": name, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"cpu_count": __import__("os").cpu_count(),
                        "kernel": platform.release()}, **data}
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return out
