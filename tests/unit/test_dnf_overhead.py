"""What an RPM build does not pay for: no proxy server (dnf keeps its own
packages in the shared cache) and no import of requests; the proxy still
serves as soon as a package manager asks for its URL."""

from __future__ import annotations

import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

from vzpkg.build.pkgcache import CachingProxy, upstream_key


def test_the_build_path_of_a_dnf_build_does_not_import_requests() -> None:
    code = ("import sys, vzpkg.build.pipeline, vzpkg.build.backends.dnf, vzpkg.cli.vzpkg, "
            "vzpkg.cli.cmd_build; print(sorted(m for m in ('requests', 'urllib3', "
            "'http.server') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True)
    assert r.stdout.strip() == "[]"


def test_proxy_starts_its_server_only_when_asked_for_a_url(tmp_path: Path) -> None:
    upstream = "http://127.0.0.1:9/debian"          # never contacted: the file is cached
    cached = tmp_path / upstream_key(upstream) / "pool/main/x/x_1_all.deb"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"package bytes")
    before = threading.active_count()
    with CachingProxy(tmp_path) as proxy:
        assert threading.active_count() == before       # nothing listening yet
        assert (proxy.fetch(upstream, "pool/main/x/x_1_all.deb") == cached)
        assert threading.active_count() == before
        base = proxy.url_for(upstream)
        assert base.startswith("http://127.0.0.1:")
        assert proxy.url_for(upstream) == base          # one server per build
        with urllib.request.urlopen(f"{base}/pool/main/x/x_1_all.deb", timeout=10) as r:
            assert r.read() == b"package bytes"
        assert proxy.stats.hits == 2
        server = proxy._thread
        assert server is not None and server.is_alive()
    # this build's server thread is gone after the build
    server.join(timeout=5)
    assert not server.is_alive()
