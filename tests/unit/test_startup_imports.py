"""What start-up does not pay for: the heavy modules are imported by the commands
that use them, not when the command line is set up (see the lazy imports in
vzpkg.cli, vzpkg.core.settings, vzpkg.store.cachestore, vzpkg.build.pipeline and
vzpkg.runtime.caches, and the backend table in vzpkg.build.backends)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imported(code: str, names: tuple[str, ...]) -> list[str]:
    """Which of *names* are in sys.modules after running *code* in a fresh interpreter."""
    probe = (f"{code}\nimport json, sys\n"
             f"print(json.dumps(sorted(m for m in {names!r} if m in sys.modules)))")
    r = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                       text=True, check=True)
    found: list[str] = json.loads(r.stdout)
    return found


def test_the_vzpkg_command_line_is_set_up_without_heavy_modules() -> None:
    code = "from vzpkg.cli.vzpkg import build_parser\nbuild_parser()"
    assert _imported(code, ("yaml", "jinja2", "jsonschema", "libarchive", "requests",
                            "gnupg", "vzpkg.store.cachestore", "vzpkg.mirror",
                            "vzpkg.build.pipeline")) == []


def test_the_build_machinery_leaves_libarchive_to_its_preload_thread() -> None:
    code = "import vzpkg.build.pipeline, vzpkg.store.cachestore, vzpkg.core.settings"
    assert _imported(code, ("libarchive", "vzpkg.archive", "yaml", "requests",
                            "vzpkg.mirror")) == []


def test_vzctl_and_vzlist_start_without_the_archive_or_the_store() -> None:
    code = "import vzpkg.cli.vzctl, vzpkg.cli.vzlist, vzpkg.cli.vzubc"
    assert _imported(code, ("libarchive", "vzpkg.archive", "vzpkg.store.cachestore",
                            "vzpkg.store.manifest", "yaml", "jinja2", "requests")) == []


def _plan_and_backend(name: str) -> str:
    """Code that makes the plan for cache *name* and finds its backend class."""
    return ("from pathlib import Path\n"
            "from vzpkg.build.backends import get_backend\n"
            "from vzpkg.core.settings import Settings\n"
            "from vzpkg.template.loader import make_plan\n"
            f"plan = make_plan({name!r}, Settings(None, Path('/nonexistent')), env={{}})\n"
            "get_backend(plan.backend)")


def test_a_dnf_build_imports_no_debian_backend() -> None:
    code = _plan_and_backend("almalinux-9-x86_64-minimal")
    dnf = "vzpkg.build.backends.dnf"
    assert _imported(code, (dnf,)) == [dnf]   # the probe works
    assert _imported(code, ("vzpkg.build.backends.mmdebstrap", "vzpkg.build.backends.debootstrap",
                            "vzpkg.build.backends.deb", "email.utils")) == []


def test_a_debian_build_imports_no_rpm_backend() -> None:
    code = _plan_and_backend("debian-12-x86_64-minimal")
    mm = "vzpkg.build.backends.mmdebstrap"
    assert _imported(code, (mm,)) == [mm]
    assert _imported(code, ("vzpkg.build.backends.dnf", "vzpkg.build.backends.rpm_db",
                            "vzpkg.build.backends.rpm_repomd", "vzpkg.build.backends.debootstrap",
                            "sqlite3", "xml.etree")) == []


# A pull (vzpkg.cli.vzpkg.main with `pull`) does not import these at all ...
PULL_NEVER = ("vzpkg.cli.cmd_ve", "vzpkg.core.gpg", "vzpkg.mirror.publisher", "secrets",
              "hmac", "yaml", "gnupg", "requests", "urllib3", "email", "http.client")
# ... and these standard modules, which the modules it uses import, are stand-ins that
# are never loaded (vzpkg.cli.vzpkg.DEFERRED says who imports each and why)
PULL_STAND_INS = ("inspect", "ast", "dis", "tokenize", "copy", "signal", "ipaddress",
                  "ntpath", "zlib", "bz2", "lzma", "_compression", "weakref", "array",
                  "struct")


def test_a_pull_loads_no_module_it_does_not_use(tmp_path: Path) -> None:
    # the command line of a pull, through the settings and the mirror configuration up
    # to the puller, which refuses to start without a trusted key (no network needed);
    # every module a pull runs is imported by then
    ws = tmp_path / "ws"
    ws.mkdir()
    argv = ["--workspace", str(ws), "--cache-dir", str(tmp_path / "caches"), "pull",
            "debian-12", "--mirror", "http://127.0.0.1:9/"]
    code = ("import contextlib, io, json, sys\n"
            "from vzpkg.cli.vzpkg import main\n"
            "err = io.StringIO()\n"
            "with contextlib.redirect_stderr(err):\n"
            f"    rc = main({argv!r})\n"
            "loaded = [m for m, mod in sys.modules.items() "
            "if type(mod).__name__ != 'Deferred']\n"
            "print(json.dumps([rc, err.getvalue(), loaded]))\n")
    env = {**os.environ, "VZPKG_CONFIG": str(tmp_path / "none.yaml"),
           "VZ_ROOT": str(tmp_path / "vz"), "XDG_CACHE_HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, check=True)
    rc, err, loaded = json.loads(r.stdout)
    assert rc == 1 and "no trusted keys configured" in err        # the probe got there
    assert {"vzpkg.mirror.pull", "vzpkg.mirror.verify", "subprocess", "tempfile"} <= set(loaded)
    assert sorted(set(loaded) & {*PULL_NEVER, *PULL_STAND_INS}) == []
