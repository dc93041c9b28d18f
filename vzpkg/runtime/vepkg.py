"""Software in VEs, for one VE or all of them at once.

:func:`run` serves ``vzpkg install|remove|update|list|info|check-updates`` and
``vzctl runscript``: it starts the host's verified caching package proxy (the
one builds use, on the shared package cache), lets it fetch from the
repositories the VEs' templates name, and runs one worker process per VE
(:mod:`vzpkg.runtime.pkgworker`), ``jobs`` at a time.  A package one VE
downloaded is served to every other from the cache; concurrent requests for
the same file wait for one download.  A VE that fails never stops the others:
each gets its result (:class:`VeResult`) and its log
(``VZ_ROOT/log/vzpkg/CTID.log``); the proxy's requests go to
``VZ_ROOT/log/vzpkg/proxy.log``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vzpkg.core.errors import UsageError, VzError
from vzpkg.runtime import pkgmgr
from vzpkg.runtime.config import lenient_values

if TYPE_CHECKING:
    from vzpkg.core.settings import Settings
    from vzpkg.runtime.ve import Runtime
    from vzpkg.template.model import Plan

WORKER_TIMEOUT = 3600.0


@dataclass(frozen=True)
class Request:
    op: str                             # a pkgmgr.Op value, or "runscript"
    packages: tuple[str, ...] = ()
    security: bool = False
    dry_run: bool = False
    set_name: str | None = None         # install what this template set adds
    script: bytes = b""                 # runscript: the script's content
    args: tuple[str, ...] = ()          # runscript: its arguments


@dataclass
class Outcome:
    results: list[dict[str, Any]] = field(default_factory=list)
    proxy: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.results if not r["ok"]]


def log_dir(rt: Runtime) -> Path:
    d = rt.paths.root / "log" / "vzpkg"
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    return d


class Plans:
    """The build plans of the VEs' templates, each rendered once (host data: what
    repositories a VE may reach through the proxy, what a set adds)."""

    def __init__(self, settings: Settings | None) -> None:
        self.settings = settings
        self._plans: dict[str, Plan | None] = {}

    def get(self, name: str) -> Plan | None:
        if not name or self.settings is None:
            return None
        if name not in self._plans:
            from vzpkg.template.loader import make_plan
            try:
                self._plans[name] = make_plan(name, self.settings)
            except VzError:
                self._plans[name] = None    # an imported cache: no template
        return self._plans[name]


def ostemplate(rt: Runtime, ctid: int) -> str:
    return lenient_values(rt.paths.conf(ctid)).get("OSTEMPLATE") or ""


def set_packages(plans: Plans, template: str, set_name: str) -> tuple[str, ...]:
    """What template set *set_name* adds over the set the VE was made from."""
    own = plans.get(template)
    if own is None:
        raise UsageError(f"no template for the VE's OSTEMPLATE {template!r}, so the set "
                         f"{set_name!r} cannot be compared with it",
                         hint="vzpkg list shows the templates; install packages by name")
    name = f"{own.distribution}-{own.release}-{own.arch}-{set_name}"
    other = plans.get(name)
    if other is None:
        raise UsageError(f"template {own.distribution}-{own.release} has no set "
                         f"{set_name!r}", hint=f"vzpkg show {own.distribution}-"
                                               f"{own.release} lists its sets")
    mine = set(own.packages)
    return tuple(p for p in other.packages if p not in mine)


def run(rt: Runtime, settings: Settings | None, ctids: Sequence[int], req: Request, *,
        jobs: int = 4, on_result: Callable[[dict[str, Any]], None] | None = None
        ) -> Outcome:
    """Run *req* in every VE of *ctids*; one result per VE, in *ctids*' order."""
    from vzpkg.build.pkgcache import CachingProxy
    started = time.monotonic()
    logs = log_dir(rt)
    plans = Plans(settings)
    wants_proxy = req.op not in ("runscript", pkgmgr.Op.LIST)
    outcome = Outcome()
    with contextlib.ExitStack() as stack:
        proxy: CachingProxy | None = None
        if wants_proxy and settings is not None:
            proxy = stack.enter_context(CachingProxy(settings.pkg_cache_dir))
            plog = stack.enter_context((logs / "proxy.log").open("a", encoding="utf-8"))
            plog.write(f"# vzpkg {req.op} {' '.join(map(str, ctids))} (pid {os.getpid()})\n")
            lock = threading.Lock()

            def write(line: str) -> None:
                with lock:
                    plog.write(line + "\n")
                    plog.flush()
            proxy.log = write
        jobs_by_ctid = {c: _job(rt, c, req, plans, proxy, logs) for c in ctids}

        def one(ctid: int) -> dict[str, Any]:
            job = jobs_by_ctid[ctid]
            res = job if "error" in job else _spawn(job, req)
            if on_result is not None:
                on_result(res)
            return res
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            outcome.results = list(pool.map(one, ctids))
        if proxy is not None:
            st = proxy.stats
            outcome.proxy = {"downloaded_bytes": st.downloaded_bytes,
                             "downloads": len(st.fetched), "hits": st.hits,
                             "not_modified": st.not_modified, "errors": list(st.errors),
                             "log": str(logs / "proxy.log")}
    outcome.seconds = round(time.monotonic() - started, 3)
    return outcome


def _job(rt: Runtime, ctid: int, req: Request, plans: Plans, proxy: Any,
         logs: Path) -> dict[str, Any]:
    """The worker's job for VE *ctid* (or its result already, when it cannot run)."""
    log = logs / f"{ctid}.log"
    base: dict[str, Any] = {"ctid": ctid, "log": str(log)}
    if not rt.paths.conf(ctid).exists():
        return {**base, "ok": False, "kind": "no-such-ve",
                "error": f"VE {ctid} does not exist (no {rt.paths.conf(ctid)})"}
    template = ostemplate(rt, ctid)
    packages = req.packages
    try:
        if req.set_name:
            packages = (*packages, *set_packages(plans, template, req.set_name))
    except UsageError as exc:
        return {**base, "ok": False, "kind": "no-such-set", "error": exc.message}
    plan = plans.get(template)
    repos: list[list[str]] = []
    if proxy is not None and plan is not None:
        for r in plan.repositories:
            if r.url and r.url.startswith("http://"):
                proxy.allow(r.url)
                repos.append([r.name, proxy.url_for(r.url)])
    log.write_text(f"[vzpkg] {req.op} {' '.join(packages)} in VE {ctid} "
                   f"({template or 'no OSTEMPLATE'}) at "
                   f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n", encoding="utf-8")
    return {**base, "root": str(rt.paths.root), "op": req.op, "packages": list(packages),
            "security": req.security, "dry_run": req.dry_run, "args": list(req.args),
            "proxy_port": proxy.port() if proxy is not None else 0,
            "repos": repos, "gpgcheck": True,
            "releasever": (plan.var("releasever") or plan.release) if plan else ""}


def _spawn(job: dict[str, Any], req: Request) -> dict[str, Any]:
    """Run one VE's worker; its result (a failure when the worker itself failed)."""
    argv = [sys.executable, "-m", "vzpkg.runtime.pkgworker", json.dumps(job)]
    try:
        p = subprocess.run(argv, input=req.script, capture_output=True,
                           timeout=WORKER_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return {"ctid": job["ctid"], "ok": False, "kind": "timeout", "log": job["log"],
                "error": f"no result within {WORKER_TIMEOUT:.0f} s"}
    lines = p.stdout.decode(errors="replace").strip().splitlines()
    try:
        res: dict[str, Any] = json.loads(lines[-1])
        return res
    except (IndexError, ValueError):
        tail = p.stderr.decode(errors="replace").strip()[-500:]
        return {"ctid": job["ctid"], "ok": False, "kind": "failed", "log": job["log"],
                "error": f"the worker failed (status {p.returncode}): {tail}"}
