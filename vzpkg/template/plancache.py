"""Build plans kept between runs, so that ``vzpkg build NAME`` reaches the package
manager sooner.

Making a plan imports the loader stack (yaml, the schema, jinja2: some 35 ms)
and reads and renders the template (some 10 ms).  :func:`make_plan_cached`
answers the same call from ``plans/`` in the user cache directory
(``$XDG_CACHE_HOME/vzpkg``, else ``~/.cache/vzpkg``) when nothing that went into
the plan has changed, importing only json, hashlib, binascii and the plan model;
otherwise it calls :func:`vzpkg.template.loader.make_plan` and keeps the result.

A stale plan would build the wrong thing, so a kept plan is used only when

- its key matches: the arguments (name, ``--set``, backend, apt directory), every
  ``VZPKG_*`` environment variable, every field of the settings but the cache
  directory (workspace, configuration values, template and hook directories), vzpkg's version
  and location, this file's format, the interpreter (version, executable,
  prefix, module path), the machine (a short name means the host's
  architecture), the user and group ids (which hook scripts are executable)
  and, when a path is relative, the current directory;
- and every file system input recorded while the loader ran is as it was.  An
  audit hook records each file opened and each directory listed, and stand-ins
  for ``os.stat``, ``os.lstat`` and ``os.access`` record each path probed,
  found or not (a workspace template that appears later shadows the shipped
  one; a key file that appears earlier in the search is taken instead).  Only
  the import system's own work is left out; the source files of the loaded
  vzpkg modules and of yaml, jinja2, markupsafe and jsonschema are inputs
  instead.  Each is checked again with ``stat``: type and mode,
  inode, device, size, mtime and ctime (ctime moves on every change and cannot
  be set back, so an edit that keeps size and mtime is still seen).  Variables
  read from ``os.environ`` one by one are recorded too.

A plan is not kept when the loader did anything else (ran a program, wrote
outside the user cache directory, changed directory or the environment, used
the network), when an input changed while it ran, or when an input changed
less than two seconds before it started (a later change within the same
file-system timestamp tick could not be told apart).  Errors are never kept.
Cache files are JSON, rebuilt field by field and checked against the plan's
digest (never pickle: a cache file cannot run code); only files owned by the
user and writable by no one else are read.  An unreadable, corrupt or foreign
file is a miss, and a cache directory that cannot be written (or is a link, or
someone else's) is not written.  At most ``KEEP_FILES`` files are kept, none
older than ``KEEP_DAYS``.

``VZPKG_NO_PLAN_CACHE=1`` (any value but empty or ``0``) turns the cache off:
no lookup, no store.
"""

from __future__ import annotations

import _thread
import binascii
import dataclasses
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import vzpkg
from vzpkg.core.settings import Settings, user_cache_dir
from vzpkg.core.settings_table import env_name
from vzpkg.core.types import Compression
from vzpkg.template import model

FORMAT = 1
# inputs changed this recently are not trusted: a second change within the same
# timestamp tick would not show (FAT's mtimes are 2 s apart; its ctime is the birth)
RACY_NS = 2_000_000_000
KEEP_DAYS = 30
KEEP_FILES = 256
DISABLE_ENV = env_name("plan_cache")    # VZPKG_NO_PLAN_CACHE

# packages whose code makes plans besides vzpkg's (their top-level file stands
# for the installed version)
_LIBRARIES = ("yaml", "jinja2", "markupsafe", "jsonschema")

_READS = frozenset({"open", "os.listdir", "os.scandir"})
_WRITES = frozenset({
    "os.mkdir", "os.remove", "os.rename", "os.rmdir", "os.chmod", "os.chown",
    "os.link", "os.symlink", "os.truncate", "os.utime", "os.chflags", "os.lchflags",
    "os.setxattr", "os.removexattr", "os.mkfifo", "os.mknod", "shutil.copyfile",
    "shutil.copymode", "shutil.copystat", "shutil.copytree", "shutil.move",
    "shutil.rmtree", "shutil.chown", "shutil.make_archive", "shutil.unpack_archive"})
# anything whose inputs cannot be recorded: the plan is not kept
_FOREIGN = ("subprocess.", "os.exec", "os.fork", "os.posix_spawn", "os.spawn",
            "os.system", "os.kill", "os.putenv", "os.unsetenv", "os.chdir", "os.fchdir",
            "os.chroot", "socket.", "urllib.", "http.", "ftplib.", "smtplib.", "poplib.",
            "imaplib.", "nntplib.", "telnetlib.", "ctypes.", "sqlite3.", "dbm.", "mmap.",
            "pty.", "webbrowser.")
_CODE_SUFFIXES = (".py", ".pyc", ".pyw", ".so", ".pth")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

_ENVIRON = type(os.environ)
Sig = list[int]             # st_mode, st_ino, st_dev, st_size, st_mtime_ns, st_ctime_ns


def make_plan_cached(name: str, settings: Settings, *, overrides: Mapping[str, str] = {},
                     env: Mapping[str, str] | None = None, backend: str | None = None,
                     apt_dir: Path | None = None) -> model.Plan:
    """:func:`vzpkg.template.loader.make_plan` (same arguments, same result, same
    errors), from the cache when nothing that went into the plan has changed."""
    environ = os.environ if env is None else env
    if _disabled(os.environ) or _disabled(environ):
        return _make(name, settings, overrides, env, backend, apt_dir)
    try:
        key = _key(name, settings, overrides, environ, backend, apt_dir)
    except (TypeError, ValueError):     # a configuration value json cannot order
        return _make(name, settings, overrides, env, backend, apt_dir)
    base = user_cache_dir()
    if not base.is_absolute():          # no home directory to speak of
        return _make(name, settings, overrides, env, backend, apt_dir)
    file = base / "plans" / (hashlib.sha256(key.encode()).hexdigest() + ".json")
    plan = _lookup(file, key)
    if plan is not None:
        return plan
    from vzpkg.template import loader  # noqa: F401  (imported here, not recorded)
    rec = _Recorder.start(str(base))
    if rec is None:                     # another thread is recording, or no cwd
        return _make(name, settings, overrides, env, backend, apt_dir)
    try:
        plan = _make(name, settings, overrides, env, backend, apt_dir)
    finally:
        rec.stop()
    inputs = rec.inputs_if_clean()
    if inputs is not None:
        _store(file, key, inputs, plan, rec.started_ns)
    return plan


def _make(name: str, settings: Settings, overrides: Mapping[str, str],
          env: Mapping[str, str] | None, backend: str | None, apt_dir: Path | None) -> model.Plan:
    from vzpkg.template.loader import make_plan
    if apt_dir is None:
        return make_plan(name, settings, overrides=overrides, env=env, backend=backend)
    return make_plan(name, settings, overrides=overrides, env=env, backend=backend,
                     apt_dir=apt_dir)


def _disabled(env: Mapping[str, str]) -> bool:
    return env.get(DISABLE_ENV, "") not in ("", "0")


def _key(name: str, settings: Settings, overrides: Mapping[str, str],
         env: Mapping[str, str], backend: str | None, apt_dir: Path | None) -> str:
    """Everything besides files that the plan depends on, as one string."""
    fields = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
    paths = [p for p in (settings.workspace, apt_dir, *settings.template_dirs,
                         *settings.hook_dirs) if p is not None]
    parts = {
        "format": FORMAT,
        "vzpkg": [vzpkg.__version__, os.path.dirname(os.path.abspath(vzpkg.__file__))],
        # which interpreter, and where its modules come from (yaml, jinja2, ...)
        "python": [sys.version, sys.executable, sys.prefix, sys.path[1:]],
        "machine": os.uname().machine,
        "ids": [os.getuid(), os.geteuid(), os.getgid(), os.getegid(),
                sorted(os.getgroups())],
        "cwd": None if all(p.is_absolute() for p in paths) else os.getcwd(),
        "name": name,
        "overrides": sorted(overrides.items()),
        "backend": backend,
        "apt_dir": None if apt_dir is None else str(apt_dir),
        "env": sorted((k, v) for k, v in env.items()
                      if k.startswith("VZPKG_") and k != DISABLE_ENV),
        # where caches are stored does not go into a plan (a fresh --cache-dir
        # finds the plan too); everything else in the settings does
        "settings": {k: (dict(v) if isinstance(v, Mapping) else v)
                     for k, v in fields.items() if k != "cache_dir"},
    }
    return json.dumps(parts, sort_keys=True, separators=(",", ":"), default=repr)


# -- lookup ----------------------------------------------------------------------

def _lookup(file: Path, key: str) -> model.Plan | None:
    """The kept plan for *key* if every input is unchanged; None otherwise."""
    try:
        # no link, no FIFO to hang on, nothing written by someone else (for
        # root with a user's HOME, say)
        fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as f:
            st = os.fstat(fd)
            if st.st_mode & 0o170022 != 0o100000 or st.st_uid != os.geteuid():
                return None
            doc = json.loads(f.read())
        if doc["format"] != FORMAT or doc["key"] != key or not _unchanged(doc["inputs"]):
            return None
        plan = decode_plan(doc["plan"])
        return plan if plan.digest == model.plan_digest(plan) else None
    except Exception:       # missing, unreadable, corrupt, foreign: a miss, never an error
        return None


def _unchanged(inputs: Any) -> bool:
    """Whether every recorded input still looks as it did."""
    for kind, path, arg, want in inputs:
        if kind == "stat":
            have: Any = _sig(path, follow=bool(arg))
        elif kind == "access":
            have = os.access(path, arg)
        elif kind == "env":
            have = os.environ.get(path)
        else:
            return False
        if have != want:
            return False
    return True


def _sig(path: str, *, follow: bool = True) -> Sig:
    try:
        return _sig_of(os.stat(path, follow_symlinks=follow))
    except OSError as exc:
        return [-1, exc.errno or 0]


def _sig_of(st: os.stat_result) -> Sig:
    return [st.st_mode, st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


# -- recording -------------------------------------------------------------------

_recording: _Recorder | None = None
_record_lock = _thread.allocate_lock()
_hooked = False


class _Recorder:
    """The file system inputs of one make_plan call on one thread."""

    def __init__(self, skip: str) -> None:
        self.thread = _thread.get_ident()
        self.skip = skip            # the user cache directory: schema marks, plans
        self.cwd = os.getcwd()
        self.started_ns = time.time_ns()
        self.inputs: dict[tuple[str, str, int], Any] = {}
        self.spoiled = ""           # why the plan may not be kept
        self.saved: tuple[Any, Any, Any, Any] = (os.stat, os.lstat, os.access,
                                                 _ENVIRON.__getitem__)
        self.real_stat: Callable[..., os.stat_result] = os.stat

    @classmethod
    def start(cls, skip: str) -> _Recorder | None:
        global _recording, _hooked
        if not _record_lock.acquire(blocking=False):
            return None
        try:
            rec = cls(skip)
            if not _hooked:
                sys.addaudithook(_audit)    # for good: an audit hook cannot be removed
                _hooked = True
        except Exception:                   # no current directory, a hook that refuses
            _record_lock.release()
            return None
        stat, lstat, access, getitem = rec.saved
        os.stat = _stat_probe(stat, follow=True)
        os.lstat = _stat_probe(lstat, follow=False)
        os.access = _access_probe(access)
        setattr(_ENVIRON, "__getitem__", _environ_probe(getitem))  # noqa: B010
        _recording = rec
        return rec

    def stop(self) -> None:
        global _recording
        _recording = None
        os.stat, os.lstat, os.access, getitem = self.saved
        setattr(_ENVIRON, "__getitem__", getitem)  # noqa: B010
        _record_lock.release()

    def spoil(self, why: str) -> None:
        self.spoiled = self.spoiled or why

    def path(self, path: Any) -> str | None:
        """*path* as an absolute path to record; None for the user cache directory."""
        p = os.fsdecode(path)
        if not os.path.isabs(p):
            p = os.path.join(self.cwd, p)
        if p == self.skip or p.startswith(self.skip + os.sep):
            return None
        return p

    def add(self, kind: str, path: str, arg: int, value: Any) -> None:
        k = (kind, path, arg)
        if k in self.inputs and self.inputs[k] != value:
            self.spoil(f"{path} changed while the plan was made")
        self.inputs[k] = value

    def event(self, event: str, args: tuple[Any, ...]) -> None:
        if event in _READS:
            target = "." if not args or args[0] is None else args[0]
            if isinstance(target, int):
                if event != "open":     # a listing by descriptor: cannot be named
                    self.spoil(f"{event} of a file descriptor")
                return                  # open(fd): the file was opened by name before
            flags = args[2] if event == "open" and len(args) > 2 else 0
            p = self.path(target)
            if p is None:
                return
            if isinstance(flags, int) and flags & _WRITE_FLAGS:
                self.spoil(f"wrote {p}")
                return
            try:
                sig = _sig_of(self.real_stat(p))
            except OSError as exc:
                sig = [-1, exc.errno or 0]
            self.add("stat", p, 1, sig)
        elif event in _WRITES:
            named = [self.path(a) for a in args if isinstance(a, (str, bytes, os.PathLike))]
            if event == "os.mkdir" and named and named[0] is not None and \
                    self.skip.startswith(named[0].rstrip(os.sep) + os.sep):
                return      # making the way to the user cache directory
            if not named or any(p is not None for p in named):
                self.spoil(f"{event} {args!r:.200}")
        elif event.startswith(_FOREIGN):
            self.spoil(event)

    def inputs_if_clean(self) -> list[list[Any]] | None:
        """What to check before reusing the plan, or None if it may not be kept."""
        if self.spoiled:
            return None
        for f in _code_files():
            sig = _sig(f)
            if sig[0] == -1:
                return None             # code from a zip file, say: changes would not show
            self.add("stat", f, 1, sig)
        return [[kind, path, arg, v] for (kind, path, arg), v in self.inputs.items()]


def _audit(event: str, args: tuple[Any, ...]) -> None:
    """Process-wide and permanent: a no-op unless this thread is recording."""
    rec = _recording
    if rec is None or rec.thread != _thread.get_ident():
        return
    try:
        if (event in _READS or event in _WRITES) and _importing(event, args):
            return
        rec.event(event, args)
    except Exception as exc:        # an audit hook must not fail the operation
        rec.spoil(f"recording {event}: {exc!r}")


def _importing(event: str, args: tuple[Any, ...]) -> bool:
    """Whether the import system itself does this: looks for modules, reads their
    code (which _code_files covers) or writes .pyc files.  Data files it reads
    for a module (``loader.get_data``) are inputs like any other."""
    if not sys._getframe(2).f_code.co_filename.startswith("<frozen importlib"):
        return False
    if event != "open":
        return True
    flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
    return bool(flags & _WRITE_FLAGS) or (
        isinstance(args[0], (str, bytes)) and os.fsdecode(args[0]).endswith(_CODE_SUFFIXES))


def _stat_probe(real: Callable[..., os.stat_result], *,
                follow: bool) -> Callable[..., os.stat_result]:
    """*real* (os.stat or os.lstat), recording what it finds while recording."""
    def probe(path: Any, *args: Any, **kw: Any) -> os.stat_result:
        rec = _recording
        if rec is None or rec.thread != _thread.get_ident():
            return real(path, *args, **kw)
        try:
            st = real(path, *args, **kw)
        except OSError as exc:
            _note(rec, path, args, kw, follow, [-1, exc.errno or 0])
            raise
        _note(rec, path, args, kw, follow, _sig_of(st))
        return st
    return probe


def _note(rec: _Recorder, path: Any, args: tuple[Any, ...], kw: dict[str, Any],
          follow: bool, sig: Sig) -> None:
    try:
        if isinstance(path, int):
            return                      # fstat of a file opened (and recorded) by name
        if args or kw.get("dir_fd") is not None:
            rec.spoil("stat relative to a directory descriptor")
            return
        p = rec.path(path)
        if p is not None:
            rec.add("stat", p, int(follow and kw.get("follow_symlinks", True)), sig)
    except Exception as exc:
        rec.spoil(f"recording stat: {exc!r}")


def _access_probe(real: Callable[..., bool]) -> Callable[..., bool]:
    """*real* (os.access), recording its answer while recording."""
    def probe(path: Any, mode: int, *args: Any, **kw: Any) -> bool:
        ok = real(path, mode, *args, **kw)
        rec = _recording
        if rec is None or rec.thread != _thread.get_ident():
            return ok
        try:
            plain = not args and not isinstance(path, int) and kw.get("dir_fd") is None \
                and not kw.get("effective_ids") and kw.get("follow_symlinks", True)
            if not plain:
                rec.spoil("access() with options")
                return ok
            p = rec.path(path)
            if p is not None:
                rec.add("access", p, mode, ok)
        except Exception as exc:
            rec.spoil(f"recording access: {exc!r}")
        return ok
    return probe


def _environ_probe(real: Callable[[Any, str], str]) -> Callable[[Any, str], str]:
    """*real* (``os.environ[name]``, and so .get, ``in`` and getenv), recording the
    variables read one by one.  Walking the whole environment is not recorded:
    the loader does that for VZPKG_* only, and those are part of the key."""
    def probe(self: Any, name: str) -> str:
        try:
            value = real(self, name)
        except KeyError:
            _note_env(self, name, None)
            raise
        _note_env(self, name, value)
        return value
    return probe


def _note_env(environ: Any, name: str, value: str | None) -> None:
    rec = _recording
    if rec is None or rec.thread != _thread.get_ident() or environ is not os.environ:
        return
    try:
        caller = sys._getframe(2).f_code
        if caller.co_name == "__iter__" and "_collections_abc" in caller.co_filename:
            return
        rec.add("env", name, 0, value)
    except Exception as exc:
        rec.spoil(f"recording the environment: {exc!r}")


def _code_files() -> list[str]:
    """The source files of the code that made the plan."""
    out: set[str] = set()
    for name, mod in list(sys.modules.items()):
        top = name.partition(".")[0]
        if top == "vzpkg" or (name == top and top in _LIBRARIES):
            f = getattr(mod, "__file__", None)
            if isinstance(f, str) and f:
                out.add(os.path.abspath(f))
    return sorted(out)


# -- storing ---------------------------------------------------------------------

def _store(file: Path, key: str, inputs: list[list[Any]], plan: model.Plan,
           started_ns: int) -> None:
    """Keep *plan* if its inputs are settled and it survives the round trip."""
    for kind, _path, _arg, v in inputs:
        if kind == "stat" and v[0] != -1 and max(v[4], v[5]) >= started_ns - RACY_NS:
            return                      # changed just now: a same-tick change is invisible
    if not _unchanged(inputs):
        return                          # changed while the plan was made
    data = encode_plan(plan)
    try:
        back = decode_plan(json.loads(json.dumps(data)))
    except (KeyError, TypeError, ValueError):
        return
    if back != plan or back.digest != plan.digest or \
            [k.armored for k in back.keys] != [k.armored for k in plan.keys]:
        return                          # a value JSON does not carry: never keep it
    text = json.dumps({"format": FORMAT, "key": key, "inputs": inputs, "plan": data},
                      separators=(",", ":"))
    import contextlib
    import stat
    import tempfile
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        st = os.lstat(file.parent)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            return                      # a link or someone else's: neither write nor prune
        fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=file.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, file)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _prune(file.parent)
    except OSError:
        pass                            # a read-only home: make plans every time


def _prune(directory: Path) -> None:
    """Drop plans older than KEEP_DAYS and all but the newest KEEP_FILES."""
    import contextlib
    now = time.time()
    kept: list[tuple[float, str]] = []
    with os.scandir(directory) as it:
        for e in it:
            try:
                age = now - e.stat(follow_symlinks=False).st_mtime
            except OSError:
                continue
            if e.name.endswith(".json"):
                kept.append((age, e.path))
            elif e.name.endswith(".tmp") and age > 3600:     # left by a killed run
                kept.append((float("inf"), e.path))
    kept.sort()
    for i, (age, path) in enumerate(kept):
        if i >= KEEP_FILES or age > KEEP_DAYS * 86400:
            with contextlib.suppress(OSError):
                os.unlink(path)


# -- the plan as JSON ------------------------------------------------------------

def encode_plan(plan: model.Plan) -> dict[str, Any]:
    """Every field of *plan* as JSON values (script bytes in base64)."""
    o = plan.options
    return {
        "name": plan.name, "distribution": plan.distribution, "release": plan.release,
        "arch": plan.arch, "target_arch": plan.target_arch, "set_name": plan.set_name,
        "backend": plan.backend, "template_file": str(plan.template_file),
        "variables": [[k, v] for k, v in plan.variables],
        "repositories": [{"name": r.name, "url": r.url, "suite": r.suite,
                          "components": list(r.components), "metalink": r.metalink,
                          "mirrorlist": r.mirrorlist} for r in plan.repositories],
        "keys": [{"file": str(k.file), "fingerprint": k.fingerprint, "armored": k.armored}
                 for k in plan.keys],
        "packages": list(plan.packages),
        "scripts": [{"stage": s.stage.value,
                     "text": binascii.b2a_base64(s.text, newline=False).decode(),
                     "path": None if s.path is None else str(s.path)}
                    for s in plan.scripts],
        "options": {"compression": o.compression.value, "trim_docs": o.trim_docs,
                    "trim_locales": o.trim_locales, "weak_deps": o.weak_deps,
                    "variant": o.variant},
        "digest": plan.digest,
    }


def decode_plan(d: Any) -> model.Plan:
    """The plan :func:`encode_plan` gave *d* for; ValueError (or KeyError,
    TypeError) when *d* is anything else."""
    o = d["options"]
    return model.Plan(
        name=_str(d["name"]), distribution=_str(d["distribution"]),
        release=_str(d["release"]), arch=_str(d["arch"]),
        target_arch=_str(d["target_arch"]), set_name=_str(d["set_name"]),
        backend=_str(d["backend"]), template_file=Path(_str(d["template_file"])),
        variables=tuple(_pair(v) for v in _list(d["variables"])),
        repositories=tuple(
            model.Repository(name=_str(r["name"]), url=_opt(r["url"]), suite=_opt(r["suite"]),
                       components=tuple(_str(c) for c in _list(r["components"])),
                       metalink=_opt(r["metalink"]), mirrorlist=_opt(r["mirrorlist"]))
            for r in _list(d["repositories"])),
        keys=tuple(model.Key(file=Path(_str(k["file"])), fingerprint=_str(k["fingerprint"]),
                       armored=_str(k["armored"])) for k in _list(d["keys"])),
        packages=tuple(_str(p) for p in _list(d["packages"])),
        scripts=tuple(
            model.Script(stage=model.ScriptStage(_str(s["stage"])),
                   text=binascii.a2b_base64(_str(s["text"]), strict_mode=True),
                   path=None if s["path"] is None else Path(_str(s["path"])))
            for s in _list(d["scripts"])),
        options=model.Options(compression=Compression(_str(o["compression"])),
                        trim_docs=_bool(o["trim_docs"]),
                        trim_locales=_bool(o["trim_locales"]),
                        weak_deps=_bool(o["weak_deps"]), variant=_str(o["variant"])),
        digest=_str(d["digest"]),
    )


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"expected a string, got {type(v).__name__}")
    return v


def _opt(v: Any) -> str | None:
    return None if v is None else _str(v)


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {type(v).__name__}")
    return v


def _list(v: Any) -> list[Any]:
    if not isinstance(v, list):
        raise ValueError(f"expected a list, got {type(v).__name__}")
    return v


def _pair(v: Any) -> tuple[str, str]:
    k, val = _list(v)
    return _str(k), _str(val)
