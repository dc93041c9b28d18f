"""Odd values given to vzctl set and a planted mount point: clean refusals."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.conftest import assert_user_error
from tests.runtime_helpers import destroy_all, runtime_for
from vzpkg.runtime.params import possible_cpus
from vzpkg.runtime.ve import Runtime

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

CTID = 9341


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    r = runtime_for(tmp_path_factory.mktemp("odd"))
    r.create(CTID, "busybox-1", layout_name="plain")
    yield r
    destroy_all(r)


def _vzctl(rt: Runtime, *args: str, as_limit: int | None = None
           ) -> subprocess.CompletedProcess[str]:
    """vzctl as a user runs it; with *as_limit*, under that address-space limit."""
    def limit() -> None:
        if as_limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (as_limit, as_limit))

    env = {**os.environ, "VZ_ROOT": str(rt.paths.root),
           "VZPKG_CACHE_DIR": str(rt.cache_dirs[0])}
    return subprocess.run([sys.executable, "-m", "vzpkg.cli.vzctl", *args], env=env,
                          preexec_fn=limit, capture_output=True, text=True, check=False,
                          timeout=120)


def test_set_a_huge_cpumask_is_refused_quickly_in_little_memory(rt: Runtime) -> None:
    before = rt.paths.conf(CTID).read_text()
    t0 = time.monotonic()
    r = _vzctl(rt, "set", str(CTID), "--cpumask", "0-30000000", "--save",
               as_limit=512 << 20)
    took = time.monotonic() - t0
    n = possible_cpus()
    assert_user_error(r, "--cpumask", "30000000", f"the host's CPUs are 0-{n - 1}")
    assert took < 20, took
    assert rt.paths.conf(CTID).read_text() == before
    # a mask the host has is still taken
    r = _vzctl(rt, "set", str(CTID), "--cpumask", f"0-{n - 1}", "--save")
    assert r.returncode == 0, r.stderr
    assert rt.config(CTID).get("CPUMASK") in (f"0-{n - 1}", "0")
