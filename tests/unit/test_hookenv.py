"""The hook environment table (vzpkg.build.hookenv): the scripts' environment, the
help of ``vzpkg build``, README.md and metadata/README.md all come from it.
(tests/integration/test_build_errors.py runs real scripts through the pipeline
and compares what they got with the table.)"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.metadata_helpers import make_workspace
from vzpkg.build.buildve import BuildLog, run_host_script, script_env
from vzpkg.build.hookenv import (
    HOOK_ENV,
    HookVar,
    hook_env,
    hookenv_markdown,
    hookenv_text,
    plan_env,
    with_stage,
)
from vzpkg.cli.cmd_build import BUILD_EPILOG
from vzpkg.template.loader import make_plan
from vzpkg.template.model import Plan, Script, ScriptStage

ROOT = Path(__file__).resolve().parents[2]
NAMES = [v.name for v in HOOK_ENV]
RUNNER = {"PATH", "LC_ALL", "HOME"}     # what BuildLog.spawn gives every command
SHELL = {"PWD"}                         # what /bin/sh exports by itself


@pytest.fixture
def plan(tmp_path: Path) -> Plan:
    ws = make_workspace(tmp_path / "ws")
    return make_plan("testdist-1-x86_64-minimal", ws.settings, env={})


def _without_codename(plan: Plan, value: str | None = None) -> Plan:
    rest = tuple(v for v in plan.variables if v[0] != "codename")
    extra = ((("codename", value),) if value is not None else ())
    return dataclasses.replace(plan, variables=tuple(sorted(rest + extra)))


def test_the_environment_is_the_table(plan: Plan, tmp_path: Path) -> None:
    inside = hook_env(plan, None, ScriptStage.POST_INSTALL)
    assert sorted(inside) == sorted(NAMES)       # every row
    assert inside == {
        "DISTRIBUTION": "testdist", "RELEASE": "1", "CODENAME": "alpha",
        "ARCH": "x86_64", "TARGET_ARCH": "amd64", "SET": "minimal",
        "CACHE_NAME": "testdist-1-x86_64-minimal", "PLAN_DIGEST": plan.digest,
        "BACKEND": "debootstrap", "PACKAGES": "iproute2 procps",
        "STAGE": "post-install", "VE_ROOT": "/"}
    on_host = hook_env(plan, tmp_path / "root", ScriptStage.PRE_CACHE)
    assert on_host == {**inside, "STAGE": "pre-cache", "VE_ROOT": str(tmp_path / "root")}
    # what the pipeline hands a script runner, and what the runner adds
    assert set(plan_env(plan, None)) == set(NAMES) - {"STAGE"}
    assert script_env(plan_env(plan, None), "post-update") == \
        with_stage(plan_env(plan, None), "post-update") == \
        hook_env(plan, None, ScriptStage.POST_UPDATE)


@pytest.mark.parametrize("codename", [None, ""])
def test_codename_only_when_the_plan_has_one(plan: Plan, codename: str | None) -> None:
    env = hook_env(_without_codename(plan, codename), None, ScriptStage.POST_CACHE)
    assert sorted(env) == sorted(n for n in NAMES if n != "CODENAME")


def test_a_host_script_gets_exactly_the_table(plan: Plan, tmp_path: Path) -> None:
    """run_host_script (pre-cache and post-cache of the pipeline) adds the stage;
    the script sees the table's variables and the runner's, nothing else."""
    out = tmp_path / "env.txt"
    script = Script(ScriptStage.POST_CACHE, f"env > {out}\n".encode())
    log = BuildLog(tmp_path / "build.log")
    work = tmp_path / "work"
    work.mkdir()
    run_host_script(script, plan_env(plan, tmp_path / "root"), log, work)
    got = dict(line.split("=", 1) for line in out.read_text().splitlines())
    assert set(got) - RUNNER - SHELL == set(NAMES)
    assert {k: got[k] for k in NAMES} == hook_env(plan, tmp_path / "root",
                                                  ScriptStage.POST_CACHE)


def test_a_row_says_where_its_value_comes_from() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        HookVar("X", "neither")
    with pytest.raises(ValueError, match="exactly one"):
        HookVar("X", "both", of_plan=lambda _p, _r: "", of_stage=lambda s: s)
    assert len(set(NAMES)) == len(NAMES)
    assert all(re.fullmatch(r"[A-Z][A-Z_]*", n) for n in NAMES)


def test_the_build_help_is_the_rendering_of_the_table() -> None:
    text = hookenv_text()
    for var in HOOK_ENV:
        assert re.search(rf"^  {var.name} +\S", text, re.M), var.name
    assert all(len(line) <= 79 for line in text.splitlines())
    r = subprocess.run([sys.executable, "-m", "vzpkg.cli.vzpkg", "build", "--help"],
                       cwd=ROOT, capture_output=True, text=True, check=True)
    assert BUILD_EPILOG in r.stdout
    assert r.stdout.endswith("\n" + text)          # last, after the epilog


def test_the_command_line_loads_the_table_only_for_the_help() -> None:
    probe = ("import sys\nfrom vzpkg.cli.vzpkg import build_parser\nbuild_parser()\n"
             "print('vzpkg.build.hookenv' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                       text=True, check=True)
    assert r.stdout == "False\n"


def test_the_readme_list_is_the_rendering_of_the_table() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- generated by vzpkg\.build\.hookenv\.hookenv_markdown\(\).*?-->\n"
                      r"(.*?)<!-- end of the generated hook environment -->", readme, re.S)
    assert block is not None, "README.md: the markers of the hook environment are gone"
    assert block.group(1) == "\n" + hookenv_markdown() + "\n", \
        "README.md: paste hookenv_markdown() between the markers"
    assert len(hookenv_markdown().splitlines()) == 2 + len(HOOK_ENV)


def test_the_template_format_names_only_variables_of_the_table() -> None:
    text = (ROOT / "metadata" / "README.md").read_text(encoding="utf-8")
    para = [p for p in text.split("\n\n") if "vzpkg/build/hookenv.py" in p]
    assert len(para) == 1, "metadata/README.md no longer points at the scripts' environment"
    named = set(re.findall(r"`([A-Z][A-Z_]+)`", para[0]))
    assert named and named <= set(NAMES)


def test_no_other_module_spells_out_the_variables() -> None:
    """The table is the only declaration: no module but hookenv.py names a
    variable that only the hooks get."""
    own = {"PLAN_DIGEST", "CACHE_NAME", "TARGET_ARCH", "PACKAGES"}
    for path in sorted((ROOT / "vzpkg").rglob("*.py")):
        if path.name == "hookenv.py":
            continue
        text = path.read_text(encoding="utf-8")
        found = {n for n in own if f'"{n}"' in text or f"'{n}'" in text}
        assert not found, f"{path.relative_to(ROOT)} names {sorted(found)}"
