"""Package code and template scripts cannot leave the build sandbox.

A hostile repository (tests/sandbox_helpers.py) serves a package whose %post
scriptlet runs the buildescape probe, and the template's post-install script
runs it too: the classic chroot escape and /proc/1/root, each writing a host
file; a mount, a block device node; a TCP connection to a service on the
host's loopback.  Built with dnf from the signed test repository (no
internet): the builds succeed, every attempt fails inside, the host file never
appears and the host service sees no connection.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.rpm_helpers import (
    ServedDistribution,
    rpm_dist_fixture,  # noqa: F401  (the session fixture rpm_dist)
)
from tests.sandbox_helpers import PROBE, Listener, hostile_repo, report
from vzpkg.build.backends import dnf as dnf_backend
from vzpkg.build.pipeline import build
from vzpkg.core.settings import Settings, load_settings
from vzpkg.template.loader import make_plan
from vzpkg.template.model import Plan

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

# what must fail everywhere; a chroot escape from a package manager's own chroot
# may succeed, but into the sandbox's root, where the host's files are not
ATTEMPTS = ("chroot-escape-read", "proc-1-root", "mount", "mknod")


class Setup:
    def __init__(self, base: Path, rpm_dist: ServedDistribution) -> None:
        self.base = base
        self.listener = Listener()
        self.rpm_post_file = base / "escaped-by-rpm-post"
        self.script_file = base / "escaped-by-post-install"
        for f in (self.rpm_post_file, self.script_file):
            f.with_name(f.name + ".host").write_text("a host file\n")
        hostile_repo(rpm_dist.dist, base / "repo-work", hostfile=self.rpm_post_file,
                     port=self.listener.port)
        self.ws = rpm_dist.workspace(base / "ws", url=f"{rpm_dist.base_url}/hostile/")
        tpl = self.ws / "metadata" / "vztest.yaml"
        data = yaml.safe_load(tpl.read_text())
        data["sets"]["escape"] = {"extends": "minimal", "packages": ["vztest-escapetool"]}
        data["sets"]["hostile"] = {"extends": "minimal", "packages": ["vztest-hostile"]}
        data["scripts"]["post-install"] = (
            f"cd /tmp && {PROBE} {self.script_file} {self.listener.port}"
            " > /etc/buildescape-post-install 2>&1\n"
            "cat /etc/buildescape-post-install\n")
        tpl.write_text(yaml.safe_dump(data, sort_keys=False))
        self.settings: Settings = load_settings(workspace=self.ws, cache_dir=base / "caches")

    def plan(self, set_name: str) -> Plan:
        return make_plan(f"vztest-1-x86_64-{set_name}", self.settings)

    def tree(self, plan: Plan, tag: str = "") -> Path:
        d = self.base / f"tree-{plan.set_name}{tag}"
        d.mkdir()
        subprocess.run(["tar", "--zstd", "-xpf",
                        str(self.settings.cache_dir / f"{plan.name}.tar.zst"), "-C", str(d)],
                       check=True)
        return d


@pytest.fixture(scope="module")
def setup(rpm_dist: ServedDistribution, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Setup]:
    s = Setup(tmp_path_factory.mktemp("sandbox"), rpm_dist)
    yield s
    s.listener.close()


def _contained(probe: dict[str, str], port: int) -> None:
    for what in (*ATTEMPTS, f"connect-{port}"):
        assert probe.get(what, "").startswith("failed"), (what, probe)


def test_a_post_install_script_cannot_leave_the_ve(setup: Setup) -> None:
    plan = setup.plan("escape")
    res = build(plan, setup.settings, force=True)
    log: Any = Path(str(res.log)).read_text()
    assert "(started ahead)" in log             # the VE made while dnf installs
    probe = report((setup.tree(plan) / "etc/buildescape-post-install").read_text())
    _contained(probe, setup.listener.port)
    assert probe["chroot-escape"].startswith("failed")     # pivot_root: nowhere to go
    assert not setup.script_file.exists()
    assert setup.listener.connections == 0


@pytest.mark.parametrize("prestarted", [True, False], ids=["prestarted", "two-runs"])
def test_a_packages_post_scriptlet_cannot_leave_the_sandbox(
        setup: Setup, prestarted: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not prestarted:      # dnf downloads, then installs from the cache, restricted
        monkeypatch.setattr(dnf_backend, "dnf_python", lambda: None)
    plan = setup.plan("hostile")
    res = build(plan, setup.settings, force=True)
    assert ("(pre-started)" in Path(str(res.log)).read_text()) == prestarted
    tree = setup.tree(plan, f"{prestarted}")
    probe = report((tree / "etc/buildescape-rpm-post").read_text())
    _contained(probe, setup.listener.port)
    assert not setup.rpm_post_file.exists()
    assert not setup.script_file.exists()
    assert setup.listener.connections == 0
    assert not list(setup.settings.pkg_cache_dir.rglob("vzpkg-poison"))
    # the scriptlet ran, as root, in the tree
    assert (tree / PROBE.lstrip("/")).is_file()
