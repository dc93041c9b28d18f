"""The settings table (vzpkg.core.settings_table): every key of vzpkg.yaml and every
VZPKG_* variable, the checks of the configuration reader, the README table and
``vzpkg --help`` made from it, and the precedence the readers keep."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vzpkg.build.payloads import enabled as payloads_enabled
from vzpkg.cli.vzpkg import build_parser, main
from vzpkg.core import settings as settings_mod
from vzpkg.core.errors import ConfigError
from vzpkg.core.settings import Settings, load_settings
from vzpkg.core.settings_table import (
    FILE_KEYS,
    SETTINGS,
    env_name,
    settings_help,
    settings_markdown,
)
from vzpkg.mirror import mirror_config
from vzpkg.template import plancache

ROOT = Path(__file__).resolve().parents[2]
NOT_SETTINGS = {"VZPKG_SANDBOX_FD"}   # an fd passed to the sandbox's tools


def _workspace(tmp_path: Path, text: str) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir(parents=True)
    (ws / "vzpkg.yaml").write_text(text, encoding="utf-8")
    return ws


def _env(tmp_path: Path, **more: str) -> dict[str, str]:
    """An environment without a system configuration (VZPKG_CONFIG names no file)."""
    return {"VZPKG_CONFIG": str(tmp_path / "no-system.yaml"), **more}


def _refusal(tmp_path: Path, text: str) -> ConfigError:
    ws = _workspace(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(workspace=ws, env=_env(tmp_path))
    return info.value


# -- the reader refuses what the table does not know --------------------------------

def test_an_unknown_key_names_file_line_and_the_closest_setting(tmp_path: Path) -> None:
    err = _refusal(tmp_path, "# my workspace\nwork_dir: /tmp/w\ncach_dir: caches\n")
    assert err.message == f"{tmp_path / 'ws' / 'vzpkg.yaml'}:3: unknown setting 'cach_dir'"
    assert err.hint is not None and "did you mean 'cache_dir'?" in err.hint


def test_the_line_is_counted_past_nested_mappings(tmp_path: Path) -> None:
    err = _refusal(tmp_path, "pull:\n  mirrors:\n    - http://m.test/vz\n"
                             "  retries: 2\n\nsigning_key: ABC\n")
    assert err.message.endswith("vzpkg.yaml:6: unknown setting 'signing_key'")
    assert err.hint is not None and "'signing'" in err.hint


def test_a_key_like_no_setting_lists_the_known_ones(tmp_path: Path) -> None:
    system = tmp_path / "system.yaml"
    system.write_text("cache_dir: /srv/c\nzzz: 1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(cwd=tmp_path, env={"VZPKG_CONFIG": str(system)})
    assert info.value.message == f"{system}:2: unknown setting 'zzz'"
    assert info.value.hint == "known settings: " + ", ".join(FILE_KEYS)


def test_a_setting_of_the_command_line_only_says_where_it_goes(tmp_path: Path) -> None:
    err = _refusal(tmp_path, "workspace: /srv/ws\n")
    assert err.message.endswith(":1: unknown setting 'workspace'")
    assert err.hint == "workspace is set with --workspace DIR or $VZPKG_WORKSPACE, " \
                       "not in vzpkg.yaml"


@pytest.mark.parametrize(("text", "line", "expected", "got"), [
    ("cache_dir: [1]\n", 1, "a path (a string)", "a list"),
    ("# x\npayload_cache: \"maybe\"\n", 2, "true or false", "'maybe'"),
    ("payload_cache: 0\n", 1, "true or false", "0"),
    ("work_dir: true\n", 1, "a path (a string)", "True"),
    ("mirrors:\n  - http://d.test/debian\n", 1, "a mapping of keys to values", "a list"),
    ("cache_dir: c\npull: http://m.test/vz\n", 2, "a mapping of keys to values",
     "'http://m.test/vz'"),
])
def test_a_value_of_the_wrong_type_is_refused(tmp_path: Path, text: str, line: int,
                                              expected: str, got: str) -> None:
    err = _refusal(tmp_path, text)
    key = text.splitlines()[line - 1].split(":")[0]
    assert err.message == (f"{tmp_path / 'ws' / 'vzpkg.yaml'}:{line}: {key}: "
                           f"expected {expected}, got {got}")
    assert err.hint is not None and err.hint.startswith(f"{key}: ")


def test_a_file_that_is_not_a_mapping_is_refused_with_its_line(tmp_path: Path) -> None:
    err = _refusal(tmp_path, "# settings\n- cache_dir\n")
    assert err.message.endswith("vzpkg.yaml:2: expected a mapping of settings, got list")


def test_the_command_line_reports_a_bad_key_without_a_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    ws = _workspace(tmp_path, "cache_dir: caches\npayload_cach: false\n")
    monkeypatch.setenv("VZPKG_CONFIG", str(tmp_path / "no-system.yaml"))
    assert main(["--workspace", str(ws), "list"]) == 1
    err = capsys.readouterr().err
    assert f"vzpkg: error: {ws / 'vzpkg.yaml'}:2: unknown setting 'payload_cach'" in err
    assert "hint: did you mean 'payload_cache'?" in err and "Traceback" not in err


# -- what stays valid ------------------------------------------------------------------

def test_the_repository_own_configuration_is_valid(tmp_path: Path) -> None:
    s = load_settings(workspace=ROOT, env=_env(tmp_path))
    assert s.cache_dir == ROOT / "caches" and s.config_files == (ROOT / "vzpkg.yaml",)


def test_every_setting_of_the_file_is_accepted(tmp_path: Path) -> None:
    ws = _workspace(tmp_path, "cache_dir: c\nwork_dir: /tmp/w\npayload_cache: off\n"
                              "mirrors: {debian: 'http://d.test/debian'}\n"
                              "pull: {mirrors: ['http://m.test/vz'], retries: 1}\n"
                              "signing: {key: ABC}\n")
    s = load_settings(workspace=ws, env=_env(tmp_path))
    assert set(s.config) == set(FILE_KEYS)
    assert s.config["payload_cache"] is False


def test_an_empty_value_means_the_default(tmp_path: Path) -> None:
    ws = _workspace(tmp_path, "cache_dir:\npull:\n")
    assert load_settings(workspace=ws, env=_env(tmp_path)).cache_dir == ws / "caches"


def test_mirrors_yaml_names_mirrors_not_settings(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    mirrors = tmp_path / "mirrors.yaml"
    mirrors.write_text("debian: http://d.test/debian\nmy_mirror: http://m.test/\n")
    monkeypatch.setattr(settings_mod, "SYSTEM_MIRRORS", mirrors)
    s = Settings(workspace=None, cache_dir=tmp_path, config={"mirrors": {"debian": "x"}})
    assert s.mirror_overrides() == {"debian": "x", "my_mirror": "http://m.test/"}


def test_the_sub_keys_of_pull_and_signing_come_from_the_table(tmp_path: Path) -> None:
    ws = _workspace(tmp_path, "signing: {key: ABC, gnupg_home: /g}\n")
    s = load_settings(workspace=ws, env=_env(tmp_path))
    with pytest.raises(ConfigError, match=r"signing: unknown key\(s\) gnupg_home") as info:
        mirror_config(s, root=tmp_path / "vz")
    assert info.value.hint == "known keys: key, gnupghome"
    ws2 = _workspace(tmp_path / "2", "pull: {mirror: ['http://m.test/vz']}\n")
    s = load_settings(workspace=ws2, env=_env(tmp_path))
    with pytest.raises(ConfigError, match=r"pull: unknown key\(s\) mirror") as info:
        mirror_config(s, root=tmp_path / "vz")
    assert info.value.hint == "known keys: mirrors, trusted_keys, timeout, retries"


# -- precedence: option, environment, configuration, default -----------------------

def test_the_environment_beats_the_file_and_the_option_beats_both(tmp_path: Path) -> None:
    ws = _workspace(tmp_path, "cache_dir: from-file\n")
    assert load_settings(workspace=ws, env=_env(tmp_path)).cache_dir == ws / "from-file"
    env = _env(tmp_path, VZPKG_CACHE_DIR=str(tmp_path / "from-env"))
    assert load_settings(workspace=ws, env=env).cache_dir == tmp_path / "from-env"
    assert load_settings(workspace=ws, cache_dir=tmp_path / "opt",
                         env=env).cache_dir == tmp_path / "opt"
    (ws / "vzpkg.yaml").write_text("# nothing\n")
    assert load_settings(workspace=ws, env=_env(tmp_path)).cache_dir == ws / "caches"


def test_the_workspace_file_overrides_the_system_file_key_by_key(tmp_path: Path) -> None:
    system = tmp_path / "etc" / "vzpkg.yaml"
    system.parent.mkdir()
    system.write_text("cache_dir: sys-caches\nwork_dir: /sys/work\n")
    ws = _workspace(tmp_path, "work_dir: /ws/work\n")
    s = load_settings(env={"VZPKG_CONFIG": str(system), "VZPKG_WORKSPACE": str(ws)},
                      cwd=tmp_path)
    assert s.workspace == ws and s.config_files == (system, ws / "vzpkg.yaml")
    assert s.config["work_dir"] == "/ws/work"
    assert s.cache_dir == ws / "sys-caches"     # relative to the last file read


def test_work_dir_from_the_environment_before_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = _workspace(tmp_path, "work_dir: /from/file\n")
    s = load_settings(workspace=ws, env=_env(tmp_path))
    monkeypatch.delenv("VZPKG_WORK_DIR", raising=False)
    assert s.work_dir == Path("/from/file")
    monkeypatch.setenv("VZPKG_WORK_DIR", str(tmp_path / "env-work"))
    assert s.work_dir == tmp_path / "env-work"


def test_payload_cache_from_the_environment_before_the_file(tmp_path: Path) -> None:
    ws = _workspace(tmp_path, "payload_cache: false\n")
    config = load_settings(workspace=ws, env=_env(tmp_path)).config
    assert not payloads_enabled({}, config)
    assert payloads_enabled({"VZPKG_PAYLOAD_CACHE": "1"}, config)
    assert not payloads_enabled({"VZPKG_PAYLOAD_CACHE": "off"}, {})


def test_the_readers_take_their_variables_from_the_table() -> None:
    assert env_name("cache_dir") == "VZPKG_CACHE_DIR"
    assert env_name("work_dir") == "VZPKG_WORK_DIR"
    assert env_name("payload_cache") == "VZPKG_PAYLOAD_CACHE"
    assert env_name("workspace") == "VZPKG_WORKSPACE"
    assert env_name("config") == "VZPKG_CONFIG"
    assert plancache.DISABLE_ENV == env_name("plan_cache") == "VZPKG_NO_PLAN_CACHE"
    with pytest.raises(KeyError):
        env_name("mirrors")         # a family: VZPKG_MIRROR_<NAME>


# -- the table covers the source, the README and --help ------------------------------

def _covered(name: str) -> bool:
    for s in SETTINGS:
        prefix = s.env_prefix
        if s.names_env(name) or (prefix is not None and name == prefix):
            return True
    return False


def test_every_variable_the_source_names_is_in_the_table() -> None:
    found: dict[str, str] = {}
    for path in sorted((ROOT / "vzpkg").rglob("*")):
        if path.is_file() and path.suffix in (".py", ".json", ".md", ".sh", ".yaml"):
            text = path.read_text(encoding="utf-8")
            for m in re.finditer(r"\bVZPKG_[A-Z0-9_]+", text):
                found.setdefault(m.group(), str(path.relative_to(ROOT)))
    assert {"VZPKG_CACHE_DIR", "VZPKG_SANDBOX_FD", "VZPKG_MIRROR_"} <= set(found)  # grep works
    missing = {n: p for n, p in found.items() if n not in NOT_SETTINGS and not _covered(n)}
    assert missing == {}, "add these to SETTINGS in vzpkg/core/settings_table.py"
    assert not any(_covered(n) for n in NOT_SETTINGS)


def test_the_table_is_well_formed() -> None:
    keys = [s.key for s in SETTINGS]
    assert len(keys) == len(set(keys))
    envs = [s.env for s in SETTINGS if s.env]
    assert len(envs) == len(set(envs)) and all(e.startswith("VZPKG_") for e in envs)
    for s in SETTINGS:
        assert s.help and s.default and "\n" not in s.help
        assert s.in_file or s.env or s.option, s.key


def test_the_readme_table_is_the_rendering_of_the_table() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    begin = readme.index("<!-- generated by vzpkg.core.settings_table.settings_markdown()")
    begin = readme.index("\n", begin) + 1
    end = readme.index("<!-- end of the generated table -->", begin)
    assert readme[begin:end] == "\n" + settings_markdown() + "\n", \
        "README.md: paste settings_markdown() between the markers"
    for s in SETTINGS:
        assert (f"`{s.key}:`" in settings_markdown()) == s.in_file
        if s.env:
            assert f"`{s.env}`" in settings_markdown()


def test_vzpkg_help_lists_every_setting() -> None:
    text = build_parser().format_help()
    assert settings_help() in text
    for s in SETTINGS:
        if s.in_file:
            assert f"\n  {s.key}: {s.kind}" in text
        if s.env:
            assert f"${s.env}" in text
