"""One VE's share of ``vzpkg install|remove|update|list|info|check-updates`` and
``vzctl runscript``: a process of its own per VE (``python -m
vzpkg.runtime.pkgworker JOB``), started by :mod:`vzpkg.runtime.vepkg`.

It first makes a private mount namespace, so that a stopped VE mounted for the
command is mounted there only: the host never sees the mount, and the kernel
takes it away when this process ends, however it ends.  Then, holding the
VE's lock (a VE another vzctl works on is refused at once):

* a running VE: the command joins the VE (its cgroup, user namespace first,
  then the others: :func:`vzpkg.runtime.vset.capture`);
* a stopped VE: its root is mounted, and the command is pid 1 of fresh
  namespaces on it with only loopback (:func:`vzpkg.runtime.vset.run_stopped`).

Either way the VE's own ``/bin/sh`` runs the script of
:mod:`vzpkg.runtime.pkgmgr` as the VE's root, and a :class:`ProxyDoor` in its
network namespace is its only way to the host's package proxy.  An RPM VE
without dnf is handed to :mod:`vzpkg.runtime.hostdnf`.

The result is one JSON line on stdout; the VE's log is the file the job names.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from vzpkg.core.errors import NoVeConfigError, VeConfigError, VeLockedError, VzError
from vzpkg.runtime import libc, pkgmgr, pkgnet, state, vset
from vzpkg.runtime.paths import VzPaths
from vzpkg.runtime.ve import Runtime


def _result(job: dict[str, Any], ok: bool, *, kind: str = "", error: str = "",
            **extra: Any) -> dict[str, Any]:
    return {"ctid": job["ctid"], "ok": ok, "kind": kind or ("ok" if ok else "failed"),
            "error": error, "log": job["log"], **extra}


def run_job(job: dict[str, Any], stdin: bytes) -> dict[str, Any]:
    ctid = int(job["ctid"])
    rt = Runtime(VzPaths(Path(job["root"])), wait_lock=False)
    log = Path(job["log"])
    started = time.monotonic()
    try:
        with rt.locked(ctid):
            rt.config(ctid)
            pid = state.running_pid(rt.paths.pidfile(ctid))
            code, text, how = _run(rt, ctid, pid, job, stdin)
    except VeLockedError as exc:
        return _result(job, False, kind="ve-locked", error=exc.message)
    except NoVeConfigError as exc:
        return _result(job, False, kind="no-such-ve", error=exc.message)
    except VeConfigError as exc:
        return _result(job, False, kind="unusable-ve", error=f"{exc.message} (the VE "
                       "could not be mounted for the command; nothing was changed)")
    except VzError as exc:
        return _result(job, False, error=str(exc))
    seconds = round(time.monotonic() - started, 3)
    with log.open("a", encoding="utf-8") as f:
        f.write(text)
        f.write(f"\n[vzpkg] exit status {code} ({how}, {seconds} s)\n")
    extra: dict[str, Any] = {"state": "running" if pid else "stopped", "via": how,
                             "status": code, "seconds": seconds}
    if job["op"] == "runscript":
        extra["output"] = text
        return _result(job, code == 0, error="" if code == 0 else
                       f"the script exited with status {code}", **extra)
    if code != 0:
        kind, message = pkgmgr.classify(code, text)
        return _result(job, False, kind=kind, error=message, **extra)
    if job["op"] == pkgmgr.Op.LIST:
        extra["packages"] = pkgmgr.parse_packages(text)
    elif job["op"] == pkgmgr.Op.CHECK:
        extra["updates"] = [u.to_json() for u in pkgmgr.parse_updates(text)]
    elif job["op"] == pkgmgr.Op.INFO:
        extra["output"] = text
    return _result(job, True, **extra)


def _run(rt: Runtime, ctid: int, pid: int | None, job: dict[str, Any],
         stdin: bytes) -> tuple[int, str, str]:
    """(status, output, how it ran)."""
    port = int(job.get("proxy_port") or 0)
    doors: list[pkgnet.ProxyDoor] = []
    try:
        if job["op"] == "runscript":
            argv = ["/bin/sh", "-s", *job.get("args", [])]
        else:
            if pid is not None and port:
                doors.append(pkgnet.open_door(pid, port))
            url = doors[0].url if doors else (f"http://127.0.0.1:{port}/" if port else "")
            argv = pkgmgr.argv(pkgmgr.Op(job["op"]), url, tuple(job["packages"]),
                               security=job["security"], dry_run=job["dry_run"])

        def ready(p: int) -> None:      # a stopped VE's fresh network namespace
            if port and job["op"] != "runscript":
                doors.append(pkgnet.open_door(p, port))
        if pid is not None:
            code, text = vset.capture(rt, ctid, argv, stdin)
            how = "joined the running VE"
        else:
            code, text = vset.run_stopped(rt, ctid, argv, stdin, ready)
            how = "stopped VE, mounted for the command"
    finally:
        for d in doors:
            d.close()
    if code == pkgmgr.NEED_HOST_DNF:
        from vzpkg.runtime import hostdnf
        code, text = hostdnf.run(rt, ctid, job)
        how += "; the host's dnf in the VE's user namespace (--installroot)"
    return code, text, how


def main(argv: list[str]) -> int:
    job = json.loads(argv[1])
    stdin = sys.stdin.buffer.read() if job["op"] == "runscript" else b""
    # a mount made here (a stopped VE's root) is this process's only
    libc.unshare(libc.CLONE_NEWNS)
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
    os.umask(0o022)
    try:
        result = run_job(job, stdin)
    except Exception as exc:    # a bug: reported as this VE's failure, with the type
        result = _result(job, False, error=f"internal error: {type(exc).__name__}: {exc}")
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
