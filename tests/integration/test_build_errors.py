"""How a build that cannot start says so: one clear message, nothing written."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.conftest import assert_user_error, run_cli


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_debian_mirror_is_named_once(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/debian"
    r = run_cli("vzpkg", ["--workspace", tmp_path, "--cache-dir", tmp_path / "caches",
                          "build", "debian-12", "--set", f"mirrors.debian={url}"])
    assert_user_error(r, f"cannot fetch {url}/dists/bookworm/InRelease: connection refused",
                      "hint: check the mirror URL")
    assert r.stderr.count("connection refused") == 1, r.stderr
    assert "HTTPConnectionPool" not in r.stderr
    assert not list((tmp_path / "caches").glob("*.tar*"))
