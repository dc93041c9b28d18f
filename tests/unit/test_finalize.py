"""Image hygiene: what must never be baked into a cache."""

from __future__ import annotations

from pathlib import Path

from vzpkg.build.finalize import finalize
from vzpkg.template.model import Options


def _tree(root: Path) -> Path:
    for d in ("etc/ssh", "var/log/apt", "var/lib/dbus", "var/cache/ldconfig", "tmp/x",
              "var/tmp", "run/lock", "dev", "usr/share/doc/pkg", "usr/share/man/man1",
              "usr/share/locale/de/LC_MESSAGES", "usr/share/locale/C.UTF-8"):
        (root / d).mkdir(parents=True)
    files = {"etc/machine-id": "0123456789abcdef\n", "var/lib/dbus/machine-id": "x",
             "etc/ssh/ssh_host_ed25519_key": "secret", "etc/ssh/sshd_config": "keep",
             "var/log/apt/history.log": "log", "var/cache/ldconfig/aux-cache": "x",
             "tmp/x/f": "x", "var/tmp/f": "x", "run/lock/f": "x", "dev/null": "x",
             "etc/resolv.conf": "nameserver 192.0.2.1\n", "etc/hostname": "buildhost\n",
             "usr/share/doc/pkg/copyright": "GPL", "usr/share/doc/pkg/README": "r",
             "usr/share/man/man1/ls.1": "m", "usr/share/locale/de/LC_MESSAGES/a.mo": "de",
             "usr/share/locale/C.UTF-8/x": "c"}
    for rel, text in files.items():
        (root / rel).write_text(text)
    return root


def test_host_and_build_traces_are_removed(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    finalize(root, Options())
    assert (root / "etc/machine-id").read_text() == ""
    assert not (root / "var/lib/dbus/machine-id").exists()
    assert not list((root / "etc/ssh").glob("ssh_host_*"))
    assert (root / "etc/ssh/sshd_config").read_text() == "keep"
    assert (root / "var/log/apt/history.log").read_text() == ""
    assert not (root / "var/cache/ldconfig/aux-cache").exists()
    for d in ("tmp", "var/tmp", "run", "dev"):
        assert list((root / d).iterdir()) == [], d
    assert (root / "etc/resolv.conf").read_text() == ""
    assert (root / "etc/hostname").read_text() == "localhost\n"
    # docs and locales stay unless the template asks
    assert (root / "usr/share/doc/pkg/README").exists()
    assert (root / "usr/share/locale/de/LC_MESSAGES/a.mo").exists()


def test_resolv_conf_symlink_to_the_host_is_replaced(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    (root / "etc/resolv.conf").unlink()
    (root / "etc/resolv.conf").symlink_to("/run/systemd/resolve/stub-resolv.conf")
    finalize(root, Options())
    assert not (root / "etc/resolv.conf").is_symlink()
    assert (root / "etc/resolv.conf").read_text() == ""


def test_trimming_docs_and_locales_keeps_licences(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    finalize(root, Options(trim_docs=True, trim_locales=True))
    assert (root / "usr/share/doc/pkg/copyright").read_text() == "GPL"
    assert not (root / "usr/share/doc/pkg/README").exists()
    assert not (root / "usr/share/man/man1/ls.1").exists()
    assert not (root / "usr/share/locale/de").exists()
    assert (root / "usr/share/locale/C.UTF-8/x").exists()
