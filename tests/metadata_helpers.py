"""A throwaway workspace with one small, valid template, for metadata tests.

The template uses a made-up mirror host (``mirror.invalid``) and a real
Debian archive key copied from the shipped templates.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from vzpkg.core.settings import SHIPPED_METADATA, Settings

KEY_FILE = "debian-bookworm-automatic.asc"
KEY_FPR = "B8B80B5B623EAB6AD8775C45B7C5D7D6350947F8"
OTHER_KEY_FILE = "debian-trixie-automatic.asc"
OTHER_KEY_FPR = "04B54C3CDCA79751B16BC6B5225629DF75B188BD"
MIRROR = "http://mirror.invalid/debian"

TEMPLATE = """\
schema: 1
distribution: testdist
description: a test distribution
backend: debootstrap
releases:
  "1": {codename: alpha}
  "2": {codename: beta, point: 7}
architectures: [x86_64, aarch64]
arch_map: {x86_64: amd64, aarch64: arm64}
mirrors:
  main: "http://mirror.invalid/debian"
variables:
  flavour: plain
  suite_name: "{{ codename }}-{{ flavour }}"
repositories:
  - {name: main, url: "{{ mirrors.main }}", suite: "{{ codename }}", components: [main]}
  - name: extra
    url: "{{ mirrors.main }}"
    suite: "{{ codename }}-extra"
    releases: ["2"]
keys:
  - {file: keys/k.asc, fingerprint: B8B80B5B623EAB6AD8775C45B7C5D7D6350947F8}
sets:
  minimal:
    description: the small one
    packages:
      - iproute2
      - procps
      - {name: only-on-arm, architectures: [aarch64]}
      - {name: only-on-2, releases: ["2"]}
  default:
    extends: minimal
    packages: [openssh-server]
scripts:
  post-install: hooks/test/post.sh
  pre-cache: |
    echo building {{ codename }} for {{ target_arch }}
options:
  compression: zstd
  trim_docs: true
"""

HOOK = "#!/bin/sh\necho post-install\n"


@dataclass
class Workspace:
    root: Path
    settings: Settings

    @property
    def template(self) -> Path:
        return self.root / "metadata" / "testdist.yaml"

    @property
    def hook(self) -> Path:
        return self.root / "hooks" / "test" / "post.sh"

    def write(self, text: str, name: str = "testdist.yaml") -> Path:
        path = self.root / "metadata" / name
        path.write_text(text, encoding="utf-8")
        return path

    def replace(self, old: str, new: str) -> Path:
        text = self.template.read_text(encoding="utf-8")
        assert old in text, f"test bug: {old!r} not in the template"
        return self.write(text.replace(old, new, 1))


def make_workspace(root: Path, text: str = TEMPLATE) -> Workspace:
    """*root*/metadata/testdist.yaml, keys/k.asc, hooks/test/post.sh."""
    meta = root / "metadata"
    (meta / "keys").mkdir(parents=True)
    shutil.copy(SHIPPED_METADATA / "keys" / KEY_FILE, meta / "keys" / "k.asc")
    shutil.copy(SHIPPED_METADATA / "keys" / OTHER_KEY_FILE, meta / "keys" / "other.asc")
    hooks = root / "hooks" / "test"
    hooks.mkdir(parents=True)
    (hooks / "post.sh").write_text(HOOK)
    (hooks / "post.sh").chmod(0o755)
    (meta / "testdist.yaml").write_text(text, encoding="utf-8")
    settings = Settings(workspace=root, cache_dir=root / "caches",
                        template_dirs=(meta,), hook_dirs=(root / "hooks",))
    return Workspace(root, settings)


def line_of(path: Path, needle: str) -> int:
    """1-based number of the first line of *path* containing *needle*."""
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if needle in line:
            return n
    raise AssertionError(f"test bug: {needle!r} not in {path}")
