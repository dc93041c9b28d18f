"""A wheel carries the shipped templates, keys and hooks: built from this tree and
installed into a fresh venv outside the checkout, vzpkg finds them there.

The fresh venv gets the wheel alone (``--no-deps``); the dependencies come from the
test's own environment through a path file, so that no network is needed for them
and nothing of the checkout is on the path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SKIP = {".git", ".venv", "caches", "build", "dist", "__pycache__", ".mypy_cache",
        ".ruff_cache", ".pytest_cache", ".demo-vz"}


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    assert r.returncode == 0, f"{cmd}: {r.stdout}{r.stderr}"
    return r  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with the wheel built from a copy of this tree; returns its bin/."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    shutil.copytree(ROOT, src, ignore=lambda d, names: [
        n for n in names if n in SKIP or n.endswith(".egg-info")])
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(base / "dist"),
          str(src)])
    wheel = next((base / "dist").glob("vzpkg-*.whl"))
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    py = venv / "bin" / "python"
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)])
    purelib = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
                   .stdout.strip())
    # the dependencies, from this environment; not the checkout (an editable vzpkg
    # here is a .pth hook that a plain path line does not run)
    (purelib / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return venv / "bin"


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("VZPKG_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"),
               VZPKG_CONFIG=str(home / "none.yaml"))
    return env


def test_the_installed_package_is_the_wheel_and_ships_its_data(installed: Path,
                                                               tmp_path: Path) -> None:
    py = installed / "python"
    r = _run([str(py), "-c", "import vzpkg, vzpkg.core.settings as s; "
              "print(vzpkg.__file__); print(s.SHIPPED_METADATA); print(s.SHIPPED_HOOKS)"],
             cwd=tmp_path, env=_env(tmp_path))
    mod, meta, hooks = (Path(line) for line in r.stdout.split())
    venv = installed.parent
    for p in (mod, meta, hooks):
        assert p.is_relative_to(venv), f"{p} is not inside the fresh venv"
        assert not p.is_relative_to(ROOT)
    assert (meta / "debian.yaml").is_file() and (meta / "keys").is_dir()
    assert (meta / "README.md").is_file()
    hook_files = sorted(hooks.rglob("*.sh"))
    assert hook_files, "no hooks in the wheel"
    for hook in hook_files:
        assert os.access(hook, os.X_OK), f"{hook} lost its executable bit"


def test_validate_and_show_work_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    env = _env(tmp_path)
    v = _run([str(installed / "vzpkg"), "validate"], cwd=tmp_path, env=env)
    assert v.stdout.count("ok ") >= 4 and "debian.yaml" in v.stdout
    assert str(installed.parent) in v.stdout           # the wheel's templates
    s = _run([str(installed / "vzpkg"), "show", "debian-12"], cwd=tmp_path, env=env)
    assert "debian-12-" in s.stdout and "post-install" in s.stdout
    # the hook the plan names is the wheel's
    assert str(installed.parent) in s.stdout


def test_a_workspace_overrides_a_shipped_template_by_name(installed: Path,
                                                          tmp_path: Path) -> None:
    env = _env(tmp_path)
    show = [str(installed / "vzpkg"), "show", "debian-12"]
    shipped = _run(show, cwd=tmp_path, env=env).stdout
    ws = tmp_path / "ws"
    (ws / "metadata").mkdir(parents=True)
    (ws / "vzpkg.yaml").write_text("cache_dir: caches\n")
    meta = Path(_run([str(installed / "python"), "-c",
                      "import vzpkg.core.settings as s; print(s.SHIPPED_METADATA)"],
                     cwd=tmp_path, env=env).stdout.strip())
    text = (meta / "debian.yaml").read_text()
    assert "minbase" in text or "packages" in text
    (ws / "metadata" / "debian.yaml").write_text(text)
    shutil.copytree(meta / "keys", ws / "metadata" / "keys")
    mine = _run(show, cwd=ws, env=env).stdout
    assert str(ws / "metadata" / "debian.yaml") in mine
    assert str(ws / "metadata" / "debian.yaml") not in shipped
