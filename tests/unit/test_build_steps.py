"""The build as named steps (vzpkg.build.pipeline): each step's time in the build
log, and a failure that names the step it came from, in the message, the error's
fields and ``--json``.  No root needed: these builds stop before anything is
installed.  (tests/integration/test_build_errors.py runs whole builds.)"""

from __future__ import annotations

import dataclasses
import json
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.metadata_helpers import Workspace, make_workspace
from vzpkg.build.pipeline import Step, _NewCache, _Update, build, update
from vzpkg.cli.vzpkg import main
from vzpkg.core.errors import BuildError, VzError
from vzpkg.core.settings import Settings
from vzpkg.template.loader import make_plan
from vzpkg.template.model import Plan

NAME = "testdist-1-x86_64-minimal"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return make_workspace(tmp_path / "ws")


@pytest.fixture
def settings(ws: Workspace, tmp_path: Path) -> Settings:
    return dataclasses.replace(ws.settings, config={"work_dir": str(tmp_path / "work")})


def _unreachable(settings: Settings) -> tuple[Plan, str]:
    url = f"http://127.0.0.1:{_closed_port()}/debian"
    return make_plan(NAME, settings, env={"VZPKG_MIRROR_MAIN": url}), url


def _log(settings: Settings) -> list[str]:
    return (settings.cache_dir / ".logs" / f"{NAME}.log").read_text().splitlines()


def _steps(lines: list[str]) -> list[tuple[str, str]]:
    """(step, "ok" | "failed") of every step line, checking its form."""
    out = []
    for line in lines:
        if line.startswith("step "):
            m = re.fullmatch(r"step ([a-z-]+): (failed after )?\d+\.\d\d s", line)
            assert m, line
            out.append((m.group(1), "failed" if m.group(2) else "ok"))
    return out


def test_the_steps_in_order() -> None:
    assert [s.name for s in _NewCache.STEPS] == [
        "keys", "repo-state", "pre-cache", "bootstrap", "post-install", "finalize",
        "post-cache", "pack", "store"]
    assert [s.name for s in _Update.STEPS] == [
        "find-cache", "keys", "repo-state", "unpack", "pre-update", "upgrade",
        "post-update", "finalize", "pack", "store"]
    steps: list[Step[Any]] = [*_NewCache.STEPS, *_Update.STEPS]
    scripts = {s.name: s.script.value for s in steps if s.script is not None}
    assert scripts == {n: n for n in ("pre-cache", "post-install", "post-cache",
                                      "pre-update", "post-update")}


def test_a_failed_step_is_named_in_the_error_and_the_log(settings: Settings) -> None:
    plan, url = _unreachable(settings)
    seen: list[str] = []
    with pytest.raises(BuildError) as ei:
        build(plan, settings, force=True, progress=lambda _n, msg: seen.append(msg))
    err = ei.value
    assert (err.build_step, err.step) == ("repo-state", "repository")
    assert err.message.startswith("repo-state: build step 'repository' failed: "
                                  f"cannot fetch {url}/dists/alpha/InRelease")
    assert str(err).count("repo-state") == 1
    assert _steps(_log(settings)) == [("keys", "ok"), ("repo-state", "failed")]
    assert seen == ["repo-state: checking repositories"]     # progress names the step
    assert list(settings.cache_dir.glob("*.tar*")) == []
    assert list((settings.work_dir).iterdir()) == []


def test_a_step_that_fails_under_its_own_name_is_not_named_twice(
        settings: Settings) -> None:
    plan = dataclasses.replace(make_plan(NAME, settings, env={}), keys=())  # no pin
    with pytest.raises(BuildError) as ei:
        build(plan, settings)
    assert (ei.value.build_step, ei.value.step) == ("keys", "keys")
    assert ei.value.message.startswith("build step 'keys' failed: template ")
    assert _steps(_log(settings)) == [("keys", "failed")]


def test_update_logs_its_steps_too(settings: Settings) -> None:
    plan, _ = _unreachable(settings)
    with pytest.raises(VzError, match=f"there is no cache {NAME} to update"):
        update(plan, settings)
    assert _steps(_log(settings)) == [("find-cache", "failed")]


def test_verbose_output_shows_the_step_times(settings: Settings) -> None:
    plan, _ = _unreachable(settings)
    lines: list[str] = []
    with pytest.raises(BuildError):
        build(plan, settings, force=True, verbose=lines.append)
    assert _steps(lines) == [("keys", "ok"), ("repo-state", "failed")]


def test_in_step_keeps_the_innermost_step() -> None:
    err = BuildError("mmdebstrap", "mmdebstrap exited with status 1", log="/l", hint="h")
    assert str(err) == ("build step 'mmdebstrap' failed: mmdebstrap exited with status 1"
                        "\n  log: /l\n  hint: h")
    err.in_step("bootstrap")
    err.in_step("outer")
    assert err.build_step == "bootstrap"
    assert str(err) == ("bootstrap: build step 'mmdebstrap' failed: mmdebstrap exited "
                        "with status 1\n  log: /l\n  hint: h")
    assert err.args == (err.message,)


def test_json_output_carries_the_step(ws: Workspace, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("VZPKG_CONFIG", str(tmp_path / "no-config.yaml"))
    monkeypatch.setenv("VZPKG_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("VZPKG_NO_PLAN_CACHE", "1")
    monkeypatch.setenv("VZPKG_MIRROR_MAIN", f"http://127.0.0.1:{_closed_port()}/debian")
    rc = main(["--workspace", str(ws.root), "--cache-dir", str(tmp_path / "caches"),
               "build", NAME, "--json"])
    out, err = capsys.readouterr()
    assert rc == 1
    res = json.loads(out)["results"]
    assert [(r["name"], r["status"], r["step"]) for r in res] == [
        (NAME, "failed", "repo-state")]
    assert res[0]["error"].startswith("repo-state: build step 'repository' failed")
    assert "vzpkg: error: repo-state: build step 'repository' failed" in err
