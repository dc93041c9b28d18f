"""How a build that cannot start says so: one clear message, nothing written."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import assert_user_error, run_cli
from tests.rpm_helpers import (
    ServedDistribution,
    rpm_dist_fixture,  # noqa: F401  (the session fixture rpm_dist)
)
from vzpkg.build.hookenv import HOOK_ENV, hook_env
from vzpkg.build.pipeline import _NewCache, build
from vzpkg.core.errors import BuildError
from vzpkg.core.settings import Settings, load_settings
from vzpkg.template.loader import make_plan
from vzpkg.template.model import Plan, ScriptStage


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_debian_mirror_is_named_once(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/debian"
    r = run_cli("vzpkg", ["--workspace", tmp_path, "--cache-dir", tmp_path / "caches",
                          "build", "debian-12", "--set", f"mirrors.debian={url}"])
    assert_user_error(r, f"cannot fetch {url}/dists/bookworm/InRelease: connection refused",
                      "hint: check the mirror URL",
                      "error: repo-state: build step 'repository' failed")
    assert r.stderr.count("connection refused") == 1, r.stderr
    assert "HTTPConnectionPool" not in r.stderr
    assert not list((tmp_path / "caches").glob("*.tar*"))


# -- the build's named steps, with the tests' RPM distribution ----------------------

STEP_LINE = re.compile(r"step ([a-z-]+): (failed after )?\d+\.\d\d s")


def _steps(log: Path) -> list[tuple[str, str]]:
    """(step, "ok" | "failed") of every step line of the build log *log*."""
    out = []
    for line in log.read_text().splitlines():
        if line.startswith("step "):
            m = STEP_LINE.fullmatch(line)
            assert m, line
            out.append((m.group(1), "failed" if m.group(2) else "ok"))
    return out


def _rpm_workspace(rpm_dist: ServedDistribution, tmp: Path, variant: str = "good",
                   scripts: str = "") -> tuple[Settings, Plan]:
    """The test template at *variant*, with the post-install script replaced and
    *scripts* (YAML lines of other scripts) added."""
    ws = rpm_dist.workspace(tmp / "ws", variant)
    tpl = ws / "metadata" / "vztest.yaml"
    text = tpl.read_text()
    old = 'echo "post-install ran in the VE" > /etc/vztest-post-install'
    assert old in text and "\nscripts:\n" in text
    text = text.replace(old, "env > /etc/hook-env").replace("\nscripts:\n",
                                                              "\nscripts:\n" + scripts)
    tpl.write_text(text)
    settings = load_settings(workspace=ws, cache_dir=tmp / "caches")
    return settings, make_plan("vztest-1-x86_64-minimal", settings)


def _env(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines())


def _only_table(env: dict[str, str]) -> dict[str, str]:
    """*env* without what the runner (PATH, LC_ALL, HOME) and the shell (PWD, and
    busybox's SHLVL) add: what is left must be the table's."""
    return {k: v for k, v in env.items()
            if k not in ("PATH", "LC_ALL", "HOME", "PWD", "SHLVL")}


def test_a_build_times_every_step_and_scripts_get_the_table(
        rpm_dist: ServedDistribution, tmp_path: Path) -> None:
    pre, post = tmp_path / "pre-cache.env", tmp_path / "post-cache.env"
    settings, plan = _rpm_workspace(rpm_dist, tmp_path, scripts=(
        f"  pre-cache: |\n    env > {pre}\n"
        f"  post-cache: |\n    env > {post}\n    test -f \"$VE_ROOT/etc/hook-env\"\n"))
    res = build(plan, settings, force=True)
    assert _steps(Path(str(res.log))) == [(s.name, "ok") for s in _NewCache.STEPS]

    assert plan.var("codename") is None          # so CODENAME is not set
    names = {v.name for v in HOOK_ENV} - {"CODENAME"}
    pre_env, post_env = _only_table(_env(pre.read_text())), _only_table(_env(post.read_text()))
    root = pre_env["VE_ROOT"]
    assert root.endswith("/root") and Path(root).is_relative_to(settings.work_dir)
    assert pre_env == hook_env(plan, Path(root), ScriptStage.PRE_CACHE)
    assert post_env == hook_env(plan, Path(root), ScriptStage.POST_CACHE)
    assert set(pre_env) == names
    tree = tmp_path / "tree"
    tree.mkdir()
    subprocess.run(["tar", "--zstd", "-xpf", str(settings.cache_dir / f"{plan.name}.tar.zst"),
                    "-C", str(tree)], check=True)
    inside = _only_table(_env((tree / "etc/hook-env").read_text()))
    assert inside == hook_env(plan, None, ScriptStage.POST_INSTALL)


def test_a_failure_in_a_step_names_it_and_leaves_no_cache(
        rpm_dist: ServedDistribution, tmp_path: Path) -> None:
    settings, plan = _rpm_workspace(rpm_dist, tmp_path, "unresolvable")
    with pytest.raises(BuildError) as ei:
        build(plan, settings, force=True)
    err = ei.value
    assert (err.build_step, err.step) == ("bootstrap", "dnf install")
    assert str(err).startswith("bootstrap: build step 'dnf install' failed: ")
    assert "nothing provides vztest-c" in str(err)
    log = settings.cache_dir / ".logs" / f"{plan.name}.log"
    assert _steps(log) == [("keys", "ok"), ("repo-state", "ok"), ("bootstrap", "failed")]
    assert list(settings.cache_dir.glob("*.tar*")) == []
    assert list(settings.work_dir.glob(f"{plan.name}.{os.getpid()}")) == []


def test_the_command_line_names_the_failed_step(rpm_dist: ServedDistribution,
                                                tmp_path: Path) -> None:
    ws = rpm_dist.workspace(tmp_path / "ws", "unresolvable")
    r = run_cli("vzpkg", ["--workspace", ws, "--cache-dir", tmp_path / "caches", "build",
                          "vztest-1-x86_64-minimal", "--json"])
    assert_user_error(r, "vzpkg: error: bootstrap: build step 'dnf install' failed")
    res = json.loads(r.stdout)["results"]
    assert [(x["status"], x["step"]) for x in res] == [("failed", "bootstrap")]
