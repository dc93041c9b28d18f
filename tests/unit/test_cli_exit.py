"""The programs end with exit_fast (os._exit after the command, no module
teardown): what a user sees must not change.  Run as real processes, with
block-buffered stdout (no PYTHONUNBUFFERED) so that the final flush matters."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from vzpkg import __version__
from vzpkg.template.schema import SCHEMA_FILE

ROOT = Path(__file__).resolve().parents[2]
ENV = {k: v for k, v in os.environ.items()
       if k not in ("PYTHONUNBUFFERED", "VZPKG_WORKSPACE", "VZPKG_CACHE_DIR")}


def _run(*args: str, stdout: int | None = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, stdout=stdout,
                          stderr=subprocess.PIPE, text=True, timeout=120, check=False)


def test_version_and_a_failing_command() -> None:
    r = _run("-m", "vzpkg.cli.vzpkg", "--version")
    assert (r.returncode, r.stdout, r.stderr) == (0, f"vzpkg {__version__}\n", "")
    r = _run("-m", "vzpkg.cli.vzpkg", "show", "no-such-template")
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr.startswith("vzpkg: error: ")
    assert "no template for distribution 'no'" in r.stderr
    assert "Traceback" not in r.stderr
    r = _run("-m", "vzpkg.cli.vzpkg", "no-such-command")     # argparse's SystemExit(2)
    assert r.returncode == 2
    assert "invalid choice: 'no-such-command'" in r.stderr


def test_output_to_a_pipe_is_flushed_before_exit() -> None:
    r = _run("-m", "vzpkg.cli.vzpkg", "schema")     # < 8 KiB: all of it still buffered
    assert r.returncode == 0, r.stderr
    assert r.stdout == SCHEMA_FILE.read_text(encoding="utf-8")


def test_a_closed_pipe_is_status_141_without_a_traceback() -> None:
    rfd, wfd = os.pipe()
    os.close(rfd)                                   # nobody will ever read
    try:
        r = _run("-m", "vzpkg.cli.vzpkg", "schema", stdout=wfd)
    finally:
        os.close(wfd)
    assert (r.returncode, r.stderr) == (141, "")


def test_the_entry_point_runs_atexit_handlers_and_waits_for_threads() -> None:
    code = textwrap.dedent("""\
        import atexit, sys, threading, time
        atexit.register(print, "atexit ran")
        def late():
            time.sleep(0.2)
            print("thread finished")
        threading.Thread(target=late).start()
        sys.argv = ["vzpkg", "show", "no-such-template"]
        from vzpkg.cli.vzpkg import entry
        entry()
        """)
    r = _run("-c", code)
    assert r.returncode == 1
    assert r.stdout == "thread finished\natexit ran\n"
    assert "no template for distribution 'no'" in r.stderr
