"""The plan cache: the same Plan as the loader, from a file when nothing that went
into it changed, and a fresh one after any change (a stale plan builds the wrong
thing)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.metadata_helpers import OTHER_KEY_FPR, Workspace, make_workspace
from vzpkg.core.errors import TemplateError, UsageError
from vzpkg.core.settings import SHIPPED_METADATA, Settings, load_settings
from vzpkg.template import loader, plancache
from vzpkg.template.document import load_template
from vzpkg.template.model import (
    Key,
    Options,
    Plan,
    Repository,
    Script,
    ScriptStage,
    plan_digest,
)
from vzpkg.template.plancache import decode_plan, encode_plan, make_plan_cached

ROOT = Path(__file__).resolve().parents[2]
NAME = "testdist-1-x86_64-minimal"
SHIPPED_ENV = {"VZPKG_MIRROR_DEBIAN": "http://mirror.invalid/debian",
               "VZPKG_MIRROR_DEBIAN_SECURITY": "http://mirror.invalid/debian-security"}
HOST_MIRROR = "main: \"{{ host_mirror('debian') }}\""


class Counter:
    """Counts the calls that reached the loader (misses)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.misses = 0
        real = plancache._make

        def make(*args: Any) -> Plan:
            self.misses += 1
            return real(*args)
        monkeypatch.setattr(plancache, "_make", make)

    def plan(self, name: str, settings: Settings, **kw: Any) -> tuple[Plan, bool]:
        """The plan, and whether it came from the cache."""
        before = self.misses
        kw.setdefault("env", {})
        p = make_plan_cached(name, settings, **kw)
        return p, self.misses == before


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Counter:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(plancache.DISABLE_ENV, raising=False)
    # files written by a test are trusted after 30 ms, not a second (see settle)
    monkeypatch.setattr(plancache, "RACY_NS", 30_000_000)
    monkeypatch.setattr("vzpkg.core.settings.SYSTEM_MIRRORS", tmp_path / "etc" / "mirrors.yaml")
    return Counter(monkeypatch)


def settle() -> None:
    """Let what the test just wrote become older than RACY_NS."""
    time.sleep(0.05)


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    w = make_workspace(tmp_path / "ws")
    settle()
    return w


def plans_dir(tmp_path: Path) -> Path:
    return tmp_path / "xdg" / "vzpkg" / "plans"


def same(a: Plan, b: Plan) -> None:
    """Equal as dataclasses, in digest, and in what equality leaves out."""
    assert a == b
    assert a.digest == b.digest != ""
    assert [k.armored for k in a.keys] == [k.armored for k in b.keys]


def edit_in_place(path: Path, old: bytes, new: bytes) -> None:
    """Same size, same inode, mtime set back: only ctime tells."""
    assert len(old) == len(new)
    st = path.stat()
    data = path.read_bytes()
    assert old in data
    with open(path, "r+b") as f:
        f.write(data.replace(old, new, 1))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


# -- hits ------------------------------------------------------------------------

def test_a_hit_is_the_loaders_plan(ws: Workspace, cache: Counter, tmp_path: Path) -> None:
    first, hit = cache.plan(NAME, ws.settings)
    assert not hit
    assert len(list(plans_dir(tmp_path).glob("*.json"))) == 1
    again, hit = cache.plan(NAME, ws.settings)
    assert hit
    same(again, first)
    same(again, loader.make_plan(NAME, ws.settings, env={}))
    assert again.script(ScriptStage.POST_INSTALL) == first.script(ScriptStage.POST_INSTALL)


def test_another_cache_directory_finds_the_plan(ws: Workspace, cache: Counter,
                                                tmp_path: Path) -> None:
    first, _ = cache.plan(NAME, ws.settings)
    elsewhere = dataclasses.replace(ws.settings, cache_dir=tmp_path / "other-caches")
    again, hit = cache.plan(NAME, elsewhere)
    assert hit                      # where caches go is no input of a plan
    same(again, first)


def test_short_names_and_every_testdist_plan(ws: Workspace, cache: Counter) -> None:
    tpl = load_template(ws.template)
    names = ["testdist-1", "testdist-2-aarch64", "testdist-2-default"]
    names += [f"testdist-{r}-{a}-{s}" for r in tpl.releases for a in tpl.architectures
              for s in tpl.sets]
    for name in names:
        cache.plan(name, ws.settings)
    for name in names:
        p, hit = cache.plan(name, ws.settings)
        assert hit, name
        same(p, loader.make_plan(name, ws.settings, env={}))


def shipped_names() -> list[str]:
    out = []
    for path in sorted(SHIPPED_METADATA.glob("*.yaml")):
        tpl = load_template(path)
        out += [f"{tpl.distribution}-{r}-{a}-{s}" for r in tpl.releases
                for a in tpl.architectures for s in tpl.sets]
    return out


def test_every_shipped_plan_survives_the_round_trip(tmp_path: Path) -> None:
    settings = Settings(workspace=None, cache_dir=tmp_path / "c")
    names = shipped_names()
    assert {n.split("-")[0] for n in names} == {"debian", "fedora", "almalinux", "rocky"}
    for name in names:
        p = loader.make_plan(name, settings, env=SHIPPED_ENV, apt_dir=tmp_path / "no-apt")
        back = decode_plan(json.loads(json.dumps(encode_plan(p))))
        same(back, p)
        assert [s.text for s in back.scripts] == [s.text for s in p.scripts]


def test_shipped_plans_from_the_cache(tmp_path: Path, cache: Counter) -> None:
    settings = Settings(workspace=None, cache_dir=tmp_path / "c")
    kw: dict[str, Any] = {"env": SHIPPED_ENV, "apt_dir": tmp_path / "no-apt"}
    for name in ("debian-12-x86_64-default", "fedora-42-aarch64-minimal",
                 "almalinux-9-x86_64-minimal", "rocky-9-x86_64-default"):
        cache.plan(name, settings, **kw)
        p, hit = cache.plan(name, settings, **kw)
        assert hit, name
        same(p, loader.make_plan(name, settings, **kw))


def test_the_json_form_names_every_field() -> None:
    """A field added to the model must be added to encode_plan/decode_plan too."""
    def names(cls: Any) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}
    tpl = Plan(name="n", distribution="d", release="r", arch="a", target_arch="t",
               set_name="s", backend="b", template_file=Path("f"), variables=(("k", "v"),),
               repositories=(Repository("r"),), keys=(Key(Path("k"), "F", "A"),),
               packages=("p",), scripts=(Script(ScriptStage.PRE_CACHE, b"\0x"),),
               digest="d")
    data = encode_plan(tpl)
    assert set(data) == names(Plan)
    assert set(data["repositories"][0]) == names(Repository)
    assert set(data["keys"][0]) == names(Key)
    assert set(data["scripts"][0]) == names(Script)
    assert set(data["options"]) == names(Options)
    same(decode_plan(data), tpl)


# -- misses after a change --------------------------------------------------------

def test_a_template_edit_of_the_same_size_and_mtime_is_seen(ws: Workspace,
                                                           cache: Counter) -> None:
    cache.plan(NAME, ws.settings)
    edit_in_place(ws.template, b"flavour: plain", b"flavour: plaid")
    p, hit = cache.plan(NAME, ws.settings)
    assert not hit and p.var("flavour") == "plaid"
    settle()
    cache.plan(NAME, ws.settings)
    p, hit = cache.plan(NAME, ws.settings)
    assert hit and p.var("flavour") == "plaid"


def test_a_template_replaced_by_rename_is_seen(ws: Workspace, cache: Counter) -> None:
    cache.plan(NAME, ws.settings)
    st = ws.template.stat()
    tmp = ws.template.with_suffix(".new")
    tmp.write_text(ws.template.read_text().replace("iproute2", "iproute3"))
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, ws.template)
    p, hit = cache.plan(NAME, ws.settings)
    assert not hit and "iproute3" in p.packages


def test_a_hook_script_edit_is_seen(ws: Workspace, cache: Counter) -> None:
    cache.plan(NAME, ws.settings)
    edit_in_place(ws.hook, b"post-install", b"post-INSTALL")
    p, hit = cache.plan(NAME, ws.settings)
    script = p.script(ScriptStage.POST_INSTALL)
    assert not hit and script is not None and b"post-INSTALL" in script.text


def test_a_hook_that_is_no_longer_executable_fails_again(ws: Workspace,
                                                         cache: Counter) -> None:
    cache.plan(NAME, ws.settings)
    ws.hook.chmod(0o644)
    with pytest.raises(TemplateError, match="not executable"):
        cache.plan(NAME, ws.settings)


def test_a_replaced_key_file_is_seen(ws: Workspace, cache: Counter) -> None:
    cache.plan(NAME, ws.settings)
    keys = ws.root / "metadata" / "keys"
    shutil.copy(keys / "other.asc", keys / "k.asc")
    with pytest.raises(TemplateError, match="not the pinned"):
        cache.plan(NAME, ws.settings)
    ws.replace("B8B80B5B623EAB6AD8775C45B7C5D7D6350947F8", OTHER_KEY_FPR)
    p, hit = cache.plan(NAME, ws.settings)
    assert not hit and [k.fingerprint for k in p.keys] == [OTHER_KEY_FPR]


def test_environment_overrides_are_part_of_the_key(ws: Workspace, cache: Counter,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    base, _ = cache.plan(NAME, ws.settings)
    env = {"VZPKG_MIRROR_MAIN": "http://a.invalid/d"}
    p, hit = cache.plan(NAME, ws.settings, env=env)
    assert not hit and p.repositories[0].url == "http://a.invalid/d"
    p, hit = cache.plan(NAME, ws.settings, env={"VZPKG_MIRROR_MAIN": "http://b.invalid/d"})
    assert not hit and p.repositories[0].url == "http://b.invalid/d"
    p, hit = cache.plan(NAME, ws.settings, env={"VZPKG_SET_FLAVOUR": "x"})
    assert not hit and p.var("flavour") == "x"
    p, hit = cache.plan(NAME, ws.settings, env={"UNRELATED": "1"})
    assert hit and p == base
    # and the process environment when none is given
    monkeypatch.setenv("VZPKG_MIRROR_MAIN", "http://c.invalid/d")
    p, hit = cache.plan(NAME, ws.settings, env=None)
    assert not hit and p.repositories[0].url == "http://c.invalid/d"
    monkeypatch.setenv("VZPKG_MIRROR_MAIN", "http://d.invalid/d")
    p, hit = cache.plan(NAME, ws.settings, env=None)
    assert not hit and p.repositories[0].url == "http://d.invalid/d"
    # the loader walks the whole environment for VZPKG_*: the rest is not an input
    monkeypatch.setenv("UNRELATED", "2")
    monkeypatch.setenv("PWD", "/somewhere/else")
    p, hit = cache.plan(NAME, ws.settings, env=None)
    assert hit and p.repositories[0].url == "http://d.invalid/d"


def test_other_environment_variables_read_are_inputs(
        ws: Workspace, cache: Counter, monkeypatch: pytest.MonkeyPatch) -> None:
    real = loader.make_plan

    def reads_a_variable(*args: Any, **kw: Any) -> Plan:
        extra = os.environ.get("PLANCACHE_TEST_PACKAGE")
        p = real(*args, **kw)
        if extra:
            p = dataclasses.replace(p, packages=(*p.packages, extra))
            p = dataclasses.replace(p, digest=plan_digest(p))
        return p

    monkeypatch.setattr(loader, "make_plan", reads_a_variable)
    monkeypatch.delenv("PLANCACHE_TEST_PACKAGE", raising=False)
    cache.plan(NAME, ws.settings)
    p, hit = cache.plan(NAME, ws.settings)
    assert hit and p.packages == ("iproute2", "procps")
    monkeypatch.setenv("PLANCACHE_TEST_PACKAGE", "vim")
    p, hit = cache.plan(NAME, ws.settings)
    assert not hit and "vim" in p.packages
    p, hit = cache.plan(NAME, ws.settings)
    assert hit and "vim" in p.packages
    monkeypatch.setenv("PLANCACHE_TEST_PACKAGE", "emacs")
    p, hit = cache.plan(NAME, ws.settings)
    assert not hit and "emacs" in p.packages
    monkeypatch.setenv("UNREAD", "x")       # the rest of the environment is not an input
    _, hit = cache.plan(NAME, ws.settings)
    assert hit


def test_set_and_backend_are_part_of_the_key(ws: Workspace, cache: Counter) -> None:
    base, _ = cache.plan(NAME, ws.settings)
    p, hit = cache.plan(NAME, ws.settings, overrides={"flavour": "spicy"})
    assert not hit and p.var("flavour") == "spicy"
    p, hit = cache.plan(NAME, ws.settings, overrides={"flavour": "spicy"})
    assert hit and p.var("flavour") == "spicy"
    p, hit = cache.plan(NAME, ws.settings, backend="mmdebstrap")
    assert not hit and p.backend == "mmdebstrap"
    p, hit = cache.plan(NAME, ws.settings)
    assert hit and p == base


def test_a_template_appearing_in_an_earlier_directory_is_seen(
        ws: Workspace, cache: Counter, tmp_path: Path) -> None:
    high = tmp_path / "high" / "metadata"        # does not exist yet
    lower = tmp_path / "lower"
    lower.mkdir()
    settings = dataclasses.replace(ws.settings, template_dirs=(high, lower,
                                                               *ws.settings.template_dirs))
    settle()
    p, _ = cache.plan(NAME, settings)
    assert p.template_file == ws.template
    # a new file in a directory that was listed
    shutil.copy(ws.template, lower / "testdist.yaml")
    p, hit = cache.plan(NAME, settings)
    assert not hit and p.template_file == lower / "testdist.yaml"
    settle()
    cache.plan(NAME, settings)
    # a directory that did not exist
    high.mkdir(parents=True)
    (high / "testdist.yaml").write_text(ws.template.read_text().replace("procps", "ps"))
    p, hit = cache.plan(NAME, settings)
    assert not hit and p.template_file == high / "testdist.yaml" and "ps" in p.packages


def test_a_hook_appearing_in_an_earlier_directory_is_seen(
        ws: Workspace, cache: Counter, tmp_path: Path) -> None:
    first = tmp_path / "hooks-first"
    first.mkdir()
    settings = dataclasses.replace(ws.settings, hook_dirs=(first, *ws.settings.hook_dirs))
    settle()
    cache.plan(NAME, settings)
    (first / "test").mkdir()            # the hook's own directory did not exist either
    (first / "test" / "post.sh").write_text("#!/bin/sh\necho earlier\n")
    (first / "test" / "post.sh").chmod(0o755)
    p, hit = cache.plan(NAME, settings)
    script = p.script(ScriptStage.POST_INSTALL)
    assert not hit and script is not None and script.path == first / "test" / "post.sh"


def test_apt_sources_are_inputs(ws: Workspace, cache: Counter, tmp_path: Path) -> None:
    ws.replace('main: "http://mirror.invalid/debian"', HOST_MIRROR)
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list").write_text("deb http://one.invalid/debian bookworm main\n")
    settle()
    p, _ = cache.plan(NAME, ws.settings, apt_dir=apt)
    assert p.repositories[0].url == "http://one.invalid/debian"
    p, hit = cache.plan(NAME, ws.settings, apt_dir=apt)
    assert hit
    edit_in_place(apt / "sources.list", b"one.invalid", b"two.invalid")
    p, hit = cache.plan(NAME, ws.settings, apt_dir=apt)
    assert not hit and p.repositories[0].url == "http://two.invalid/debian"
    settle()
    cache.plan(NAME, ws.settings, apt_dir=apt)
    (apt / "sources.list").write_text("")
    (apt / "sources.list.d" / "x.sources").write_text(
        "Types: deb\nURIs: http://three.invalid/debian\nSuites: bookworm\n")
    p, hit = cache.plan(NAME, ws.settings, apt_dir=apt)
    assert not hit and p.repositories[0].url == "http://three.invalid/debian"
    # another apt directory is another key, even though the old files are unchanged
    other = tmp_path / "apt2"
    other.mkdir()
    (other / "sources.list").write_text("deb http://four.invalid/debian bookworm main\n")
    p, hit = cache.plan(NAME, ws.settings, apt_dir=other)
    assert not hit and p.repositories[0].url == "http://four.invalid/debian"


def test_configuration_is_an_input(cache: Counter, tmp_path: Path) -> None:
    w = make_workspace(tmp_path / "ws")
    w.replace('main: "http://mirror.invalid/debian"', HOST_MIRROR)
    conf = w.root / "vzpkg.yaml"
    conf.write_text("mirrors:\n  main: http://conf.invalid/a\n")
    settle()
    p, _ = cache.plan(NAME, load_settings(workspace=w.root, env={}))
    assert p.repositories[0].url == "http://conf.invalid/a"
    p, hit = cache.plan(NAME, load_settings(workspace=w.root, env={}))
    assert hit
    conf.write_text("mirrors:\n  main: http://conf.invalid/b\n")
    p, hit = cache.plan(NAME, load_settings(workspace=w.root, env={}))
    assert not hit and p.repositories[0].url == "http://conf.invalid/b"
    # /etc/vzpkg/mirrors.yaml: absent at first, then the weaker of the two
    settings = dataclasses.replace(load_settings(workspace=w.root, env={}), config={})
    system = tmp_path / "etc" / "mirrors.yaml"
    with pytest.raises(TemplateError, match="host_mirror"):
        cache.plan(NAME, settings, apt_dir=tmp_path / "no-apt")
    system.parent.mkdir()
    system.write_text("main: http://etc.invalid/m\n")
    p, hit = cache.plan(NAME, settings, apt_dir=tmp_path / "no-apt")
    assert not hit and p.repositories[0].url == "http://etc.invalid/m"
    settle()
    cache.plan(NAME, settings, apt_dir=tmp_path / "no-apt")
    system.write_text("main: http://etc.invalid/n\n")
    p, hit = cache.plan(NAME, settings, apt_dir=tmp_path / "no-apt")
    assert not hit and p.repositories[0].url == "http://etc.invalid/n"


def test_a_change_to_the_code_is_seen(ws: Workspace, cache: Counter, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    cache.plan(NAME, ws.settings)
    doc = json.loads(next(plans_dir(tmp_path).glob("*.json")).read_text())
    files = {path for _, path, _, _ in doc["inputs"]}
    for mod in ("loader", "render", "document", "assets", "hostmirror", "model"):
        assert str(Path(plancache.__file__).parent / f"{mod}.py") in files
    fake = tmp_path / "module.py"
    fake.write_text("x = 1\n")
    real = plancache._code_files
    monkeypatch.setattr(plancache, "_code_files", lambda: [*real(), str(fake)])
    shutil.rmtree(plans_dir(tmp_path))
    settle()
    _, hit = cache.plan(NAME, ws.settings)
    assert not hit
    _, hit = cache.plan(NAME, ws.settings)
    assert hit
    edit_in_place(fake, b"1", b"2")
    _, hit = cache.plan(NAME, ws.settings)
    assert not hit


def test_package_data_read_through_the_import_system_is_an_input(
        ws: Workspace, cache: Counter, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "lib" / "plandata"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "extra.txt").write_text("procps-ng")
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    real = loader.make_plan

    def with_package_data(*args: Any, **kw: Any) -> Plan:
        import pkgutil
        extra = pkgutil.get_data("plandata", "extra.txt")
        assert extra is not None
        p = real(*args, **kw)
        p = dataclasses.replace(p, packages=(*p.packages, extra.decode()))
        return dataclasses.replace(p, digest=plan_digest(p))

    monkeypatch.setattr(loader, "make_plan", with_package_data)
    settle()
    cache.plan(NAME, ws.settings)
    p, hit = cache.plan(NAME, ws.settings)
    assert hit and "procps-ng" in p.packages
    edit_in_place(pkg / "extra.txt", b"-ng", b"-xx")
    p, hit = cache.plan(NAME, ws.settings)
    assert not hit and "procps-xx" in p.packages


def test_a_relative_directory_makes_the_working_directory_part_of_the_key(
        ws: Workspace, cache: Counter, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(workspace=None, cache_dir=tmp_path / "c",
                        template_dirs=(Path("metadata"),), hook_dirs=(Path("hooks"),))
    monkeypatch.chdir(ws.root)
    cache.plan(NAME, settings)
    _, hit = cache.plan(NAME, settings)
    assert hit
    other = make_workspace(tmp_path / "other", ws.template.read_text().replace(
        "procps", "procps-ng"))
    settle()
    monkeypatch.chdir(other.root)
    p, hit = cache.plan(NAME, settings)
    assert not hit and "procps-ng" in p.packages


# -- what is never kept ----------------------------------------------------------

def test_errors_are_raised_as_before_and_never_kept(ws: Workspace, cache: Counter,
                                                    tmp_path: Path) -> None:
    cases: list[tuple[str, dict[str, Any], type[Exception]]] = [
        ("testdist-9", {}, TemplateError), (NAME, {"backend": "nope"}, UsageError),
        (NAME, {"overrides": {"mirrors.nope": "x"}}, UsageError),
        ("nodist-1", {}, TemplateError)]
    for name, kw, exc in cases:
        with pytest.raises(exc) as want:
            loader.make_plan(name, ws.settings, env={}, **kw)
        for _ in range(2):
            with pytest.raises(exc) as got:
                cache.plan(name, ws.settings, **kw)
            assert str(got.value) == str(want.value)
    assert not plans_dir(tmp_path).exists() or not list(plans_dir(tmp_path).iterdir())


def test_a_change_just_before_is_not_trusted(ws: Workspace, cache: Counter,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plancache, "RACY_NS", 10 * 1_000_000_000)
    ws.replace("plain", "fresh")
    cache.plan(NAME, ws.settings)
    p, hit = cache.plan(NAME, ws.settings)
    assert not hit and p.var("flavour") == "fresh"


def test_nothing_is_kept_when_the_loader_does_more_than_read(
        ws: Workspace, cache: Counter, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = loader.make_plan

    def runs_a_program(*args: Any, **kw: Any) -> Plan:
        subprocess.run(["true"], check=True)
        return real(*args, **kw)

    def writes(*args: Any, **kw: Any) -> Plan:
        (tmp_path / "side-effect").write_text("x")
        return real(*args, **kw)

    def input_changes(*args: Any, **kw: Any) -> Plan:
        p = real(*args, **kw)
        ws.hook.chmod(0o700)
        return p

    for fake in (runs_a_program, writes, input_changes):
        monkeypatch.setattr(loader, "make_plan", fake)
        cache.plan(NAME, ws.settings)
        _, hit = cache.plan(NAME, ws.settings)
        assert not hit, fake.__name__
    assert not plans_dir(tmp_path).exists() or not list(plans_dir(tmp_path).iterdir())


def test_other_threads_are_not_recorded_and_probes_are_put_back(
        ws: Workspace, cache: Counter, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = loader.make_plan
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("x")
    settle()

    def busy_neighbour(*args: Any, **kw: Any) -> Plan:
        t = threading.Thread(target=lambda: (elsewhere.read_text(), os.stat(elsewhere)))
        t.start()
        t.join()
        return real(*args, **kw)

    saved = (os.stat, os.lstat, os.access, type(os.environ).__getitem__)
    monkeypatch.setattr(loader, "make_plan", busy_neighbour)
    cache.plan(NAME, ws.settings)
    assert (os.stat, os.lstat, os.access, type(os.environ).__getitem__) == saved
    doc = json.loads(next(plans_dir(tmp_path).glob("*.json")).read_text())
    assert str(elsewhere) not in {path for _, path, _, _ in doc["inputs"]}
    assert str(ws.template) in {path for _, path, _, _ in doc["inputs"]}
    with pytest.raises(TemplateError):
        cache.plan("testdist-9", ws.settings)
    assert (os.stat, os.lstat, os.access, type(os.environ).__getitem__) == saved


def test_switched_off_by_the_environment(ws: Workspace, cache: Counter, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(plancache.DISABLE_ENV, "1")
    for _ in range(2):
        _, hit = cache.plan(NAME, ws.settings)
        assert not hit
    assert not plans_dir(tmp_path).exists()


# -- the cache files -------------------------------------------------------------

@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign", "other-format",
                                    "bad-plan", "tampered", "bad-inputs", "directory",
                                    "fifo", "link"])
def test_a_damaged_file_is_a_miss(ws: Workspace, cache: Counter, tmp_path: Path,
                                  damage: str) -> None:
    good, _ = cache.plan(NAME, ws.settings)
    file = next(plans_dir(tmp_path).glob("*.json"))
    text = file.read_text()
    doc = json.loads(text)
    if damage == "garbage":
        file.write_bytes(b"\x80\x00not json")
    elif damage == "truncated":
        file.write_text(text[:len(text) // 2])
    elif damage == "foreign":
        file.write_text(json.dumps([1, 2, 3]))
    elif damage == "other-format":
        file.write_text(json.dumps({**doc, "format": plancache.FORMAT + 1}))
    elif damage == "bad-plan":
        doc["plan"]["scripts"][0]["stage"] = "mid-cache"
        file.write_text(json.dumps(doc))
    elif damage == "tampered":
        doc["plan"]["packages"].append("rootkit")
        file.write_text(json.dumps(doc))
    elif damage == "bad-inputs":
        doc["inputs"] = [["stat", 7]]
        file.write_text(json.dumps(doc))
    elif damage == "fifo":
        file.unlink()
        os.mkfifo(file)
    elif damage == "link":
        real = tmp_path / "real.json"
        file.rename(real)
        file.symlink_to(real)
    else:
        file.unlink()
        file.mkdir()
    p, hit = cache.plan(NAME, ws.settings)
    assert not hit
    same(p, good)


def test_a_cache_directory_that_cannot_be_written(ws: Workspace, cache: Counter,
                                                  tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(not_a_dir))
    p, _ = cache.plan(NAME, ws.settings)
    q, hit = cache.plan(NAME, ws.settings)
    assert not hit
    same(p, q)


def test_files_of_another_user_are_not_trusted(ws: Workspace, cache: Counter,
                                               tmp_path: Path) -> None:
    cache.plan(NAME, ws.settings)
    file = next(plans_dir(tmp_path).glob("*.json"))
    os.chmod(file, 0o622)
    _, hit = cache.plan(NAME, ws.settings)
    assert not hit
    file = next(plans_dir(tmp_path).glob("*.json"))
    assert file.stat().st_mode & 0o777 == 0o600
    if os.geteuid() == 0:
        os.chown(file, 4321, 4321)
        _, hit = cache.plan(NAME, ws.settings)
        assert not hit


def test_a_plans_directory_that_is_a_link_is_left_alone(ws: Workspace, cache: Counter,
                                                        tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    old = elsewhere / "precious.json"
    old.write_text("{}")
    os.utime(old, (0, 0))
    plans_dir(tmp_path).parent.mkdir(parents=True)
    plans_dir(tmp_path).symlink_to(elsewhere)
    cache.plan(NAME, ws.settings)
    _, hit = cache.plan(NAME, ws.settings)
    assert not hit and [p.name for p in elsewhere.iterdir()] == ["precious.json"]


def test_old_and_surplus_files_are_pruned(ws: Workspace, cache: Counter,
                                          tmp_path: Path) -> None:
    d = plans_dir(tmp_path)
    d.mkdir(parents=True)
    old = time.time() - (plancache.KEEP_DAYS + 1) * 86400
    for i in range(plancache.KEEP_FILES + 10):
        f = d / f"{i:064x}.json"
        f.write_text("{}")
        if i < 5:
            os.utime(f, (old, old))
    (d / ".left-behind.tmp").write_text("")
    os.utime(d / ".left-behind.tmp", (old, old))
    cache.plan(NAME, ws.settings)
    left = {p.name for p in d.iterdir()}
    assert len(left) == plancache.KEEP_FILES
    assert not left & {f"{i:064x}.json" for i in range(5)}
    assert ".left-behind.tmp" not in left
    _, hit = cache.plan(NAME, ws.settings)
    assert hit


# -- the command line ------------------------------------------------------------

def _cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VZPKG_")}
    return {**env, "XDG_CACHE_HOME": str(tmp_path / "xdg"),
            "VZPKG_CONFIG": str(tmp_path / "no-config.yaml"), **extra}


PROBE = """\
import json, sys
{setup}
from vzpkg.cli.vzpkg import main
rc = main(sys.argv[1:])
sys.stdout.flush()
print(json.dumps(sorted(m for m in ("yaml", "jinja2", "jsonschema",
                                    "vzpkg.template.loader", "vzpkg.template.render")
                        if m in sys.modules)))
sys.exit(rc)
"""


def _show(tmp_path: Path, ws: Workspace, *args: str, setup: str = "",
          **env: str) -> tuple[str, list[str]]:
    r = subprocess.run([sys.executable, "-c", PROBE.format(setup=setup),
                        "--workspace", str(ws.root), "show", NAME, *args],
                       cwd=ROOT, env=_cli_env(tmp_path, **env), capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0, r.stderr
    out, _, modules = r.stdout.rstrip("\n").rpartition("\n")
    found: list[str] = json.loads(modules)
    return out, found


def test_a_hit_in_a_fresh_interpreter_imports_no_loader(ws: Workspace,
                                                        tmp_path: Path) -> None:
    # the first run trusts files written 30 ms before it, like the tests above
    trust = "import vzpkg.template.plancache as pc; pc.RACY_NS = 30_000_000"
    out, modules = _show(tmp_path, ws, setup=trust)
    assert "vzpkg.template.loader" in modules and "yaml" in modules     # a miss
    hit, modules = _show(tmp_path, ws)
    assert modules == []
    assert hit == out
    fresh, modules = _show(tmp_path, ws, VZPKG_NO_PLAN_CACHE="1")
    assert fresh == out and "vzpkg.template.loader" in modules
    # --set and --json go through the cache too
    out, _ = _show(tmp_path, ws, "--json", "--set", "flavour=x", setup=trust)
    hit, modules = _show(tmp_path, ws, "--json", "--set", "flavour=x")
    assert modules == [] and hit == out and json.loads(hit)["variables"]["flavour"] == "x"


BUILD_PROBE = """\
import json, sys
{setup}
import vzpkg.build.pipeline
from vzpkg.core.errors import VzError

def stop(plan, settings, **kw):
    print(json.dumps([plan.digest, sorted(
        m for m in ("yaml", "jinja2", "jsonschema", "vzpkg.template.loader") if m in sys.modules)]))
    raise VzError("stopped by the test")

vzpkg.build.pipeline.build = stop
from vzpkg.cli.vzpkg import main
sys.exit(main(sys.argv[1:]))
"""


def test_build_reaches_the_backend_without_the_loader_on_a_hit(ws: Workspace,
                                                                tmp_path: Path) -> None:
    def build(setup: str = "") -> tuple[str, list[str]]:
        r = subprocess.run([sys.executable, "-c", BUILD_PROBE.format(setup=setup),
                            "--workspace", str(ws.root), "build", NAME], cwd=ROOT,
                           env=_cli_env(tmp_path), capture_output=True, text=True,
                           check=False)
        assert r.returncode == 1 and "stopped by the test" in r.stderr, r.stderr
        digest, modules = json.loads(r.stdout)
        return digest, modules

    digest, modules = build("import vzpkg.template.plancache as pc; pc.RACY_NS = 30_000_000")
    assert "vzpkg.template.loader" in modules
    assert build() == (digest, [])
    assert digest == loader.make_plan(NAME, ws.settings, env={}).digest


def test_cli_errors_are_unchanged(ws: Workspace, tmp_path: Path) -> None:
    ws.replace("flavour: plain", "flavour: [")
    for _ in range(2):
        r = subprocess.run([sys.executable, "-m", "vzpkg.cli.vzpkg", "--workspace",
                            str(ws.root), "show", NAME], cwd=ROOT, env=_cli_env(tmp_path),
                           capture_output=True, text=True, check=False)
        assert r.returncode != 0 and "Traceback" not in r.stderr
        assert "YAML syntax error" in r.stderr


@pytest.fixture(autouse=True)
def _no_leftover_recording() -> Iterator[None]:
    yield
    assert plancache._recording is None
