"""What start-up does not pay for: the heavy modules are imported by the commands
that use them, not when the command line is set up (see the lazy imports in
vzpkg.cli, vzpkg.core.settings, vzpkg.store.cachestore, vzpkg.build.pipeline and
vzpkg.runtime.caches, and the backend table in vzpkg.build.backends)."""

from __future__ import annotations

import json
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
