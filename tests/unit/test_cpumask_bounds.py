"""CPU masks are checked against a bound before a range is expanded."""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vzpkg.runtime.params import (
    MAX_CPUS,
    ParamError,
    normalize,
    param_by_key,
    parse_cpumask,
    possible_cpus,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("text", ["0-30000000", f"0-{MAX_CPUS}", "9" * 5000,
                                  "0-" + "9" * 5000, f"{MAX_CPUS * 1000}"])
def test_huge_cpu_numbers_are_refused_without_expanding(text: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(ParamError, match=f"end at {MAX_CPUS - 1}") as ei:
        parse_cpumask(text)
    assert time.monotonic() - t0 < 0.5
    assert len(str(ei.value)) < 200            # a 5,000-digit value is not echoed whole


def test_the_host_bound_names_the_host_s_cpus() -> None:
    n = possible_cpus()
    assert 1 <= n <= MAX_CPUS
    assert parse_cpumask(f"0-{n - 1}", host=True) == tuple(range(n))
    with pytest.raises(ParamError, match=f"the host's CPUs are 0-{n - 1}"):
        normalize(param_by_key("CPUMASK"), f"0,{n}", host=True)
    # a stored CTID.conf from a bigger host still parses (start checks it)
    assert parse_cpumask(f"{n}") == (n,)


def test_many_overlapping_ranges_list_each_cpu_once() -> None:
    text = ",".join(["0-8191"] * 2000)
    assert parse_cpumask(text) == tuple(range(8192))
    assert parse_cpumask("5,0-3,2-6,007") == (0, 1, 2, 3, 4, 5, 6, 7)


def test_a_huge_range_does_not_need_memory() -> None:
    """Under a 256 MiB address-space limit (the old parser built a set of 30
    million ints, about 2 GiB) the refusal is quick and clean."""
    def small() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (256 << 20, 256 << 20))

    code = ("from vzpkg.runtime.params import parse_cpumask, ParamError\n"
            "try:\n    parse_cpumask('0-30000000')\n"
            "except ParamError as e:\n    print('refused:', e)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, preexec_fn=small,
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("refused: '0-30000000' names CPU 30000000")
