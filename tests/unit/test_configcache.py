"""Parsed configuration files kept between runs (vzpkg.core.configcache): an unchanged
vzpkg.yaml is read without PyYAML, and a changed, foreign or odd one never gives stale
settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vzpkg.core import configcache
from vzpkg.core.errors import ConfigError
from vzpkg.core.settings import load_settings


@pytest.fixture
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(configcache.DISABLE_ENV, raising=False)
    monkeypatch.delenv("VZPKG_CACHE_DIR", raising=False)
    monkeypatch.setattr(configcache, "RACY_NS", 0)    # files written by the test count
    yield tmp_path / "xdg" / "vzpkg" / "config"


def _config(tmp_path: Path, text: str) -> Path:
    cfg = tmp_path / "vzpkg.yaml"
    cfg.write_text(text)
    return cfg


def _load(cfg: Path) -> dict[str, object]:
    return dict(load_settings(env={"VZPKG_CONFIG": str(cfg)}, cwd=cfg.parent).config)


def _kept(xdg: Path) -> list[Path]:
    return sorted(xdg.glob("*.json")) if xdg.is_dir() else []


def test_a_kept_parse_is_used_and_a_change_is_seen(tmp_path: Path, xdg: Path) -> None:
    cfg = _config(tmp_path, "cache_dir: one\n")
    assert _load(cfg) == {"cache_dir": "one"}
    [kept] = _kept(xdg)
    assert kept.stat().st_mode & 0o777 == 0o600
    # what is read back is the kept parse (prove it by editing the kept copy)
    doc = json.loads(kept.read_text())
    doc["data"]["cache_dir"] = "from-the-cache"
    kept.write_text(json.dumps(doc))
    assert _load(cfg) == {"cache_dir": "from-the-cache"}
    # the same size and mtime, other bytes: ctime moved, so the file is read again
    st = cfg.stat()
    cfg.write_text("cache_dir: two\n")
    os.utime(cfg, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _load(cfg) == {"cache_dir": "two"}


def test_a_cache_file_others_can_write_is_not_read(tmp_path: Path, xdg: Path) -> None:
    cfg = _config(tmp_path, "cache_dir: one\n")
    _load(cfg)
    [kept] = _kept(xdg)
    doc = json.loads(kept.read_text())
    doc["data"]["cache_dir"] = "planted"
    kept.write_text(json.dumps(doc))
    kept.chmod(0o622)
    assert _load(cfg) == {"cache_dir": "one"}
    kept.chmod(0o600)
    xdg.chmod(0o777)                    # nor in a directory others can write
    try:
        assert _load(cfg) != {"cache_dir": "planted"}
    finally:
        xdg.chmod(0o700)
    kept.write_text("{not json")        # corrupt: a miss, never an error
    assert _load(cfg) == {"cache_dir": "one"}


def test_errors_name_the_line_from_the_kept_parse_too(tmp_path: Path, xdg: Path) -> None:
    cfg = _config(tmp_path, "cache_dir: one\n\ncahce_dir: two\n")
    messages = []
    for _ in range(2):
        with pytest.raises(ConfigError) as exc:
            _load(cfg)
        messages.append(str(exc.value))
    assert len(_kept(xdg)) == 1         # the second error came from the kept parse
    assert messages[0] == messages[1]
    assert f"{cfg}:3: unknown setting 'cahce_dir'" in messages[0]


def test_what_json_cannot_carry_or_a_fresh_file_is_not_kept(
        tmp_path: Path, xdg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _config(tmp_path, "mirrors: {debian: 2024-01-01}\n")    # a date
    assert _load(cfg) == {"mirrors": {"debian": __import__("datetime").date(2024, 1, 1)}}
    assert _kept(xdg) == []
    cfg = _config(tmp_path, "mirrors: {1: x}\n")                  # a key that is an int
    _load(cfg)
    assert _kept(xdg) == []
    monkeypatch.setattr(configcache, "RACY_NS", 2_000_000_000)
    cfg = _config(tmp_path, "cache_dir: x\n")                     # written just now
    _load(cfg)
    assert _kept(xdg) == []
    monkeypatch.setattr(configcache, "RACY_NS", 0)
    monkeypatch.setenv(configcache.DISABLE_ENV, "1")              # turned off
    _load(cfg)
    assert _kept(xdg) == []


def test_an_unchanged_config_costs_no_yaml(tmp_path: Path, xdg: Path) -> None:
    cfg = _config(tmp_path, "cache_dir: one\npull: {mirrors: [http://127.0.0.1:1/]}\n")
    probe = ("import json, sys\nimport vzpkg.core.configcache as cc\ncc.RACY_NS = 0\n"
             "from vzpkg.core.settings import load_settings\n"
             "s = load_settings()\n"
             "print(json.dumps([dict(s.config), 'yaml' in sys.modules]))\n")
    env = {**os.environ, "VZPKG_CONFIG": str(cfg), "XDG_CACHE_HOME": str(xdg.parents[1])}
    runs = [json.loads(subprocess.run([sys.executable, "-c", probe], env=env, cwd=tmp_path,
                                      capture_output=True, text=True, check=True).stdout)
            for _ in range(2)]
    want = {"cache_dir": "one", "pull": {"mirrors": ["http://127.0.0.1:1/"]}}
    assert runs == [[want, True], [want, False]]
