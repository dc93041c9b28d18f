"""What start-up does not pay for: the heavy modules are imported by the commands
that use them, not when the command line is set up (see the lazy imports in
vzpkg.cli, vzpkg.config, vzpkg.store, vzpkg.build and vzpkg.runtime.caches, and
the backend table in vzpkg.backends)."""

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
                            "gnupg", "vzpkg.store", "vzpkg.mirror", "vzpkg.build")) == []


def test_the_build_machinery_leaves_libarchive_to_its_preload_thread() -> None:
    code = "import vzpkg.build, vzpkg.store, vzpkg.config"
    assert _imported(code, ("libarchive", "vzpkg.archive", "yaml", "requests",
                            "vzpkg.mirror")) == []


def test_vzctl_and_vzlist_start_without_the_archive_or_the_store() -> None:
    code = "import vzpkg.cli.vzctl, vzpkg.cli.vzlist, vzpkg.cli.vzubc"
    assert _imported(code, ("libarchive", "vzpkg.archive", "vzpkg.store", "vzpkg.manifest",
                            "yaml", "jinja2", "requests")) == []


def _plan_and_backend(name: str) -> str:
    """Code that makes the plan for cache *name* and finds its backend class."""
    return ("from pathlib import Path\n"
            "from vzpkg.backends import get_backend\n"
            "from vzpkg.config import Settings\n"
            "from vzpkg.metadata.loader import make_plan\n"
            f"plan = make_plan({name!r}, Settings(None, Path('/nonexistent')), env={{}})\n"
            "get_backend(plan.backend)")


def test_a_dnf_build_imports_no_debian_backend() -> None:
    code = _plan_and_backend("almalinux-9-x86_64-minimal")
    assert _imported(code, ("vzpkg.backends.dnf",)) == ["vzpkg.backends.dnf"]   # probe works
    assert _imported(code, ("vzpkg.backends.mmdebstrap", "vzpkg.backends.debootstrap",
                            "vzpkg.backends.deb", "email.utils")) == []


def test_a_debian_build_imports_no_rpm_backend() -> None:
    code = _plan_and_backend("debian-12-x86_64-minimal")
    assert _imported(code, ("vzpkg.backends.mmdebstrap",)) == ["vzpkg.backends.mmdebstrap"]
    assert _imported(code, ("vzpkg.backends.dnf", "vzpkg.backends.rpm_db",
                            "vzpkg.backends.rpm_repomd", "vzpkg.backends.debootstrap",
                            "sqlite3", "xml.etree")) == []
