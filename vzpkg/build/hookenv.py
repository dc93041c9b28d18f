"""The environment of template scripts (hooks), declared once.

:data:`HOOK_ENV` has one row per variable that the scripts of a template
(pre-cache, post-install, post-cache, pre-update, post-update) find in their
environment: its name, one line of help, and how its value is made, from the
build's :class:`~vzpkg.template.model.Plan` and tree, or from the script's stage.
Everything else follows from the table:

* the environment itself: :func:`plan_env` (what the pipeline hands the script
  runners) and :func:`with_stage` (what a runner adds for the script it runs,
  see :func:`vzpkg.build.buildve.script_env`);
* ``vzpkg build --help`` (:func:`hookenv_text`);
* the list in README.md (:func:`hookenv_markdown`, checked by
  tests/unit/test_hookenv.py).

A row whose value comes out ``None`` is left out of the environment (``CODENAME``
for a template whose release has no ``codename``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vzpkg.template.model import BACKEND_FAMILIES, ScriptStage

if TYPE_CHECKING:
    from vzpkg.template.model import Plan


def _stages(in_ve: bool) -> str:
    return ", ".join(s.value for s in ScriptStage if s.in_ve == in_ve)


@dataclass(frozen=True)
class HookVar:
    """One variable of the scripts' environment.

    Exactly one of *of_plan* (from the plan and the tree's host path, None for a
    script that runs inside the VE) and *of_stage* (from the script's stage) is
    given; it returns the value, or None to leave the variable out.
    """

    name: str
    help: str                    # one line; `code` is markdown, stripped for --help
    of_plan: Callable[[Plan, Path | None], str | None] | None = None
    of_stage: Callable[[str], str | None] | None = None

    def __post_init__(self) -> None:
        if (self.of_plan is None) == (self.of_stage is None):
            raise ValueError(f"{self.name}: give exactly one of of_plan and of_stage")


HOOK_ENV: tuple[HookVar, ...] = (
    HookVar("DISTRIBUTION", "the distribution: `debian`, `almalinux`, ...",
            of_plan=lambda p, _r: p.distribution),
    HookVar("RELEASE", "the release: `12`, `9`, ...",
            of_plan=lambda p, _r: p.release),
    HookVar("CODENAME", "the release's `codename` (`bookworm`); only when the template "
                        "gives the release one",
            of_plan=lambda p, _r: p.var("codename") or None),
    HookVar("ARCH", "vzpkg's name of the architecture: `x86_64`, `aarch64`",
            of_plan=lambda p, _r: p.arch),
    HookVar("TARGET_ARCH", "the distribution's name of the architecture: `amd64`, `arm64`",
            of_plan=lambda p, _r: p.target_arch),
    HookVar("SET", "the package set: `minimal`, `default`, ...",
            of_plan=lambda p, _r: p.set_name),
    HookVar("CACHE_NAME", "the cache being built: `debian-12-x86_64-minimal`",
            of_plan=lambda p, _r: p.name),
    HookVar("PLAN_DIGEST", "the digest of the build plan (64 hex digits; `vzpkg show`)",
            of_plan=lambda p, _r: p.digest),
    HookVar("BACKEND", "the backend: " + ", ".join(f"`{b}`" for b in BACKEND_FAMILIES),
            of_plan=lambda p, _r: p.backend),
    HookVar("PACKAGES", "the set's packages, separated by spaces",
            of_plan=lambda p, _r: " ".join(p.packages)),
    HookVar("STAGE", f"the script's stage: {', '.join(s.value for s in ScriptStage)}",
            of_stage=lambda stage: stage),
    HookVar("VE_ROOT", f"`/` inside the VE ({_stages(True)}); the tree's path on the "
                       f"host for the host's scripts ({_stages(False)})",
            of_plan=lambda _p, root: str(root) if root is not None else "/"),
)
"""The variables, in the order the help lists them."""


def plan_env(plan: Plan, root: Path | None) -> dict[str, str]:
    """The variables that come from *plan*, for a script run on the host with the
    tree at *root*, or inside the VE (*root* None)."""
    env: dict[str, str] = {}
    for var in HOOK_ENV:
        if var.of_plan is not None:
            value = var.of_plan(plan, root)
            if value is not None:
                env[var.name] = value
    return env


def with_stage(base: Mapping[str, str], stage: str) -> dict[str, str]:
    """*base* (from :func:`plan_env`) and the variables of the script's *stage*."""
    env = dict(base)
    for var in HOOK_ENV:
        if var.of_stage is not None:
            value = var.of_stage(stage)
            if value is not None:
                env[var.name] = value
    return env


def hook_env(plan: Plan, root: Path | None, stage: ScriptStage) -> dict[str, str]:
    """The whole environment a script of *stage* gets from the table."""
    return with_stage(plan_env(plan, root), stage.value)


def hookenv_text(width: int = 79) -> str:
    """The variables for ``vzpkg build --help``: a name and its help a row."""
    import textwrap  # argparse has it loaded already
    pad = max(len(v.name) for v in HOOK_ENV) + 2
    out = ["Template scripts get these variables in their environment:"]
    for var in HOOK_ENV:
        lines = textwrap.wrap(var.help.replace("`", ""), width - pad - 2,
                              break_on_hyphens=False)
        out.append(f"  {var.name.ljust(pad)}{lines[0]}")
        out.extend(" " * (pad + 2) + line for line in lines[1:])
    return "\n".join(out) + "\n"


def hookenv_markdown() -> str:
    """The list of README.md: one row a variable."""
    rows = ["| variable | value |", "|---|---|"]
    rows += [f"| `{v.name}` | {v.help} |" for v in HOOK_ENV]
    return "\n".join(rows) + "\n"
