"""Every shipped Debian release builds from the mirror and runs as a VE (12 has its
own, deeper tests in test_debian_build.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.runtime_helpers import KNOWN_FAILED_UNITS, failed_units

pytestmark = pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86_64 host")


@pytest.mark.parametrize(("release", "codename", "ctid"),
                         [("11", "bullseye", 9311), ("13", "trixie", 9313)])
def test_release_builds_and_runs(tmp_path: Path, release: str, codename: str,
                                 ctid: int) -> None:
    (tmp_path / "vzpkg.yaml").write_text("cache_dir: caches\n")
    r = run_cli("vzpkg", ["--workspace", tmp_path, "build", f"debian-{release}", "--json"])
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)["results"][0]
    assert res["status"] == "built" and res["name"] == f"debian-{release}-x86_64-minimal"
    env = {"VZ_ROOT": str(tmp_path / "vz"), "VZPKG_CACHE_DIR": str(tmp_path / "caches")}

    def vzctl(*args: str) -> str:
        out = run_cli("vzctl", list(args), env=env, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    vzctl("create", str(ctid), "--ostemplate", f"debian-{release}", "--layout", "overlay")
    try:
        vzctl("start", str(ctid), "--wait")
        text = vzctl("exec", str(ctid), ". /etc/os-release; echo $VERSION_ID $VERSION_CODENAME;"
                                        " dpkg-query -W -f='${Status}\\n' apt")
        assert text.split() == [release, codename, "install", "ok", "installed"], text
        # the release's own systemd is the VE's init, booted with no unexpected failure
        assert vzctl("exec", str(ctid), "readlink /proc/1/exe").strip().endswith(
            "/systemd/systemd")
        failed = failed_units(vzctl("exec", str(ctid), "systemctl --failed --plain --no-legend"))
        assert failed <= KNOWN_FAILED_UNITS, failed
    finally:
        run_cli("vzctl", ["destroy", "--force", str(ctid)], env=env)
