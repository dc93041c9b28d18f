"""Malformed templates: every mistake names the file, the line and the key path.

Each case edits one thing in a valid template and checks the TemplateError's
file, line (the line that holds the mistake), key path and message.  A few run
``vzpkg validate`` as a subprocess to check the exit status and that no
traceback reaches the user.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.metadata_helpers import OTHER_KEY_FPR, Workspace, line_of, make_workspace
from vzpkg.core.errors import TemplateError, UsageError
from vzpkg.template.loader import make_plan, validate_file


class Case(NamedTuple):
    old: str                 # text to replace in the valid template
    new: str
    line: str | None         # a snippet of the offending line (in the edited file)
    key: str | None          # expected key path
    msg: str                 # expected part of the message


CASES: dict[str, Case] = {
    "yaml-syntax": Case("description: a test distribution", "description: a test: distribution",
                        "a test: distribution", None, "mapping values are not allowed here"),
    "yaml-unclosed-flow": Case("  minimal:\n", "  minimal: [\n", "    packages:", None,
                               "expected ',' or ']'"),
    "yaml-bad-indent": Case("    description: the small one\n",
                            "    description: the small one\n   bad: indent\n",
                            "   bad: indent", None, "YAML syntax error"),
    "duplicate-key": Case("backend: debootstrap\n", "backend: debootstrap\nbackend: dnf\n",
                          "backend: dnf", "backend", "duplicate key 'backend'"),
    "schema-version": Case("schema: 1", "schema: 2", "schema: 2", "schema",
                           "unsupported schema version 2"),
    "schema-missing": Case("schema: 1\n", "", None, None, "missing required key 'schema'"),
    "unknown-top-key": Case("backend: debootstrap\n", "backend: debootstrap\ncolour: blue\n",
                            "colour: blue", "colour", "unknown key 'colour'"),
    "unknown-repo-key": Case("suite: \"{{ codename }}-extra\"\n",
                             "suite: \"{{ codename }}-extra\"\n    suit: x\n", "suit: x",
                             "repositories[1].suit", "unknown key 'suit'"),
    "unknown-set-key": Case("    extends: minimal\n", "    extends: minimal\n    pakages: [x]\n",
                            "pakages: [x]", "sets.default.pakages", "unknown key 'pakages'"),
    "unknown-script-stage": Case("  post-install: hooks/test/post.sh\n",
                                 "  post-install: hooks/test/post.sh\n  post-boot: echo\n",
                                 "post-boot", "scripts.post-boot", "unknown key 'post-boot'"),
    "unknown-option": Case("  trim_docs: true", "  trim_dcos: true", "trim_dcos",
                           "options.trim_dcos", "unknown key 'trim_dcos'"),
    "arch-not-list": Case("architectures: [x86_64, aarch64]", "architectures: x86_64",
                          "architectures: x86_64", "architectures", "expected a list"),
    "packages-not-list": Case("    packages: [openssh-server]", "    packages: openssh-server",
                              "packages: openssh-server", "sets.default.packages",
                              "expected a list"),
    "option-wrong-type": Case("  trim_docs: true", "  trim_docs: maybe", "trim_docs: maybe",
                              "options.trim_docs", "expected true or false"),
    "compression-enum": Case("  compression: zstd", "  compression: lz4", "compression: lz4",
                             "options.compression", "'lz4' is not allowed"),
    "release-var-type": Case("{codename: alpha}", "{codename: [a, b]}", "codename: [a, b]",
                             "releases.1.codename", "expected a string"),
    "set-name-dash": Case("  default:\n", "  big-one:\n", "big-one", "sets.big-one",
                          "not a valid name"),
    "empty-releases": Case('releases:\n  "1": {codename: alpha}\n  "2": {codename: beta, '
                           'point: 7}\n', "releases: {}\n", "releases:", "releases",
                           "must not be empty"),
    "null-releases": Case('  "1": {codename: alpha}\n  "2": {codename: beta, point: 7}\n', "",
                          "releases:", "releases", "expected a mapping, got nothing"),
    "repo-without-source": Case("- {name: main, url: \"{{ mirrors.main }}\",",
                                "- {name: main,", "- {name: main,", "repositories[0]",
                                "needs 'url', 'metalink' or 'mirrorlist'"),
    "undefined-var-repo": Case("suite: \"{{ codename }}\"", "suite: \"{{ codenam }}\"",
                               "codenam }}", "repositories[0].suite",
                               "undefined variable: 'codenam' is undefined"),
    "undefined-var-script": Case("echo building {{ codename }}", "echo building {{ nope }}",
                                 "pre-cache", "scripts.pre-cache", "'nope' is undefined"),
    "undefined-mirror": Case("{{ mirrors.main }}\", suite", "{{ mirrors.backup }}\", suite",
                             "mirrors.backup", "repositories[0].url", "undefined variable"),
    "jinja-syntax": Case("suite: \"{{ codename }}\"", "suite: \"{{ codename \"",
                         "{{ codename \"", "repositories[0].suite", "Jinja2 syntax error"),
    "fingerprint-short": Case("fingerprint: B8B80B5B623EAB6AD8775C45B7C5D7D6350947F8",
                              "fingerprint: 350947F8", "350947F8", "keys[0].fingerprint",
                              "not 40 hexadecimal digits"),
    "fingerprint-mismatch": Case("fingerprint: B8B80B5B623EAB6AD8775C45B7C5D7D6350947F8",
                                 f"fingerprint: {OTHER_KEY_FPR}", OTHER_KEY_FPR,
                                 "keys[0].fingerprint", "not the pinned"),
    "key-file-missing": Case("keys/k.asc", "keys/nope.asc", "nope.asc", "keys[0].file",
                             "key file 'keys/nope.asc' not found"),
    "script-missing": Case("hooks/test/post.sh", "hooks/test/nope.sh", "nope.sh",
                           "scripts.post-install", "script file 'hooks/test/nope.sh' not found"),
    "script-escapes": Case("hooks/test/post.sh", "hooks/../../etc/passwd", "etc/passwd",
                           "scripts.post-install", "leaves the hooks directory"),
    "extends-cycle": Case("    description: the small one\n",
                          "    description: the small one\n    extends: default\n",
                          "extends: minimal", "sets.default.extends",
                          "extends cycle: minimal -> default -> minimal"),
    "extends-self": Case("    extends: minimal", "    extends: default", "extends: default",
                         "sets.default.extends", "extends cycle: default -> default"),
    "extends-unknown": Case("    extends: minimal", "    extends: minimum",
                            "extends: minimum", "sets.default.extends",
                            "extends unknown set 'minimum'"),
    "unknown-backend": Case("backend: debootstrap", "backend: apt-get", "backend: apt-get",
                            "backend", "unknown backend 'apt-get'"),
    "filter-unknown-release": Case('only-on-2, releases: ["2"]', 'only-on-2, releases: ["9"]',
                                   'releases: ["9"]',
                                   "sets.minimal.packages[3].releases[0]",
                                   "release '9' is not defined"),
    "filter-unknown-arch": Case("architectures: [aarch64]", "architectures: [sparc]",
                                "[sparc]", "sets.minimal.packages[2].architectures[0]",
                                "architecture 'sparc' is not defined"),
    "arch-map-unknown": Case("aarch64: arm64}", "aarch64: arm64, mips: mipsel}",
                             "arch_map", "arch_map.mips", "'mips' is not listed"),
    "distribution-mismatch": Case("distribution: testdist", "distribution: otherdist",
                                  "distribution: otherdist", "distribution",
                                  "does not match the file name"),
    "deb-repo-without-suite": Case("    suite: \"{{ codename }}-extra\"\n", "", "- name: extra",
                                   "repositories[1]", "a Debian repository needs 'suite'"),
    "metalink-on-deb": Case("    releases: [\"2\"]\nkeys", "    metalink: http://x.invalid/m\n"
                            "    releases: [\"2\"]\nkeys", "metalink:",
                            "repositories[1].metalink", "'metalink' is for RPM"),
    "url-not-url": Case('main: "http://mirror.invalid/debian"', 'main: "mirror.invalid/debian"',
                        "- {name: main", "repositories[0].url", "is not a URL"),
    "duplicate-repo": Case("  - name: extra", "  - name: main", "  - name: main",
                           "repositories[1].name", "duplicate repository 'main'"),
    "variable-shadows": Case("  flavour: plain", "  release: plain", "release: plain",
                             "variables.release", "shadows a built-in"),
    "no-packages": Case("    packages:\n      - iproute2\n      - procps\n"
                        "      - {name: only-on-arm, architectures: [aarch64]}\n"
                        "      - {name: only-on-2, releases: [\"2\"]}\n",
                        "    packages: []\n", "  minimal:", "sets.minimal",
                        "set 'minimal' has no packages"),
    "no-key-applies": Case("B8B80B5B623EAB6AD8775C45B7C5D7D6350947F8}",
                           "B8B80B5B623EAB6AD8775C45B7C5D7D6350947F8, releases: [\"2\"]}",
                           "keys:", "keys", "no key applies to release 1"),
    "float-release-key": Case('  "2": {codename: beta', "  2.10: {codename: beta", "2.10:",
                              "releases", "mapping key '2.10' is read as float"),
    "bool-key": Case("  flavour: plain", "  yes: plain", "yes: plain", "variables",
                     "mapping key 'yes' is read as bool"),
    "package-unknown-key": Case("      - procps\n", "      - {nam: procps}\n", "nam: procps",
                                "sets.minimal.packages[1].nam", "unknown key 'nam'"),
    "package-filter-type": Case("      - procps\n", "      - {name: procps, releases: 2}\n",
                                "releases: 2", "sets.minimal.packages[1].releases",
                                "expected a list, got an integer"),
    "host-mirror-missing": Case('main: "http://mirror.invalid/debian"',
                                "main: \"{{ host_mirror('debian') }}\"", "host_mirror",
                                "mirrors.main", "no apt source for the 'debian' archive"),
}


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return make_workspace(tmp_path / "ws")


def _validate(ws: Workspace) -> None:
    validate_file(ws.template, ws.settings, env={}, apt_dir=ws.root / "no-apt")


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_template(ws: Workspace, name: str) -> None:
    case = CASES[name]
    path = ws.replace(case.old, case.new)
    with pytest.raises(TemplateError) as info:
        _validate(ws)
    err = info.value
    assert err.file == str(path)
    if case.line is not None:
        assert err.line == line_of(path, case.line), str(err)
    else:
        assert err.line is not None
    assert err.key == case.key, str(err)
    assert case.msg in err.message, str(err)
    assert str(path) in str(err)


def test_non_executable_script(ws: Workspace) -> None:
    ws.hook.chmod(0o644)
    with pytest.raises(TemplateError) as info:
        _validate(ws)
    assert info.value.line == line_of(ws.template, "post-install:")
    assert info.value.key == "scripts.post-install"
    assert "is not executable" in info.value.message
    assert info.value.hint and "chmod +x" in info.value.hint


def test_key_file_without_key(ws: Workspace) -> None:
    (ws.root / "metadata" / "keys" / "k.asc").write_text("not a key\n")
    with pytest.raises(TemplateError) as info:
        _validate(ws)
    assert info.value.key == "keys[0].file"
    assert info.value.line == line_of(ws.template, "keys/k.asc")
    assert "no OpenPGP public key" in info.value.message


def test_key_file_with_two_keys(ws: Workspace) -> None:
    keys = ws.root / "metadata" / "keys"
    (keys / "k.asc").write_text((keys / "k.asc").read_text() + (keys / "other.asc").read_text())
    with pytest.raises(TemplateError) as info:
        _validate(ws)
    assert info.value.key == "keys[0].file"
    assert "holds 2 keys" in info.value.message


def test_top_level_list(ws: Workspace) -> None:
    ws.write("- a\n- b\n")
    with pytest.raises(TemplateError, match="expected a mapping at the top level") as info:
        _validate(ws)
    assert info.value.line == 1


def test_empty_file(ws: Workspace) -> None:
    ws.write("# nothing here\n")
    with pytest.raises(TemplateError, match="the file is empty"):
        _validate(ws)


def test_missing_file(ws: Workspace) -> None:
    with pytest.raises(TemplateError, match="no such template file"):
        validate_file(ws.root / "metadata" / "absent.yaml", ws.settings, env={})


@pytest.mark.parametrize(("name", "msg", "key"), [
    ("testdist-9", "testdist has no release '9'", "releases"),
    ("testdist-1-sparc-minimal", "testdist has no architecture 'sparc'", "architectures"),
    ("testdist-1-x86_64-huge", "testdist has no set 'huge'", "sets"),
])
def test_unknown_part_of_name(ws: Workspace, name: str, msg: str, key: str) -> None:
    with pytest.raises(TemplateError) as info:
        make_plan(name, ws.settings, env={})
    assert msg in info.value.message
    assert info.value.key == key
    assert info.value.file == str(ws.template)
    assert info.value.line == line_of(ws.template, f"{key}:")
    assert info.value.hint and "defined:" in info.value.hint


def test_unknown_distribution(ws: Workspace) -> None:
    with pytest.raises(TemplateError, match="no template for distribution 'nodist'") as info:
        make_plan("nodist-1", ws.settings, env={})
    assert info.value.hint and "testdist" in info.value.hint


@pytest.mark.parametrize("name", ["testdist", "testdist-1-x86_64-minimal-extra", "a--b",
                                  "testdist-1-x86 64-minimal"])
def test_malformed_name(ws: Workspace, name: str) -> None:
    with pytest.raises(UsageError, match="is not a cache name"):
        make_plan(name, ws.settings, env={})


@pytest.mark.parametrize(("overrides", "backend", "msg"), [
    ({"mirrors.backup": "http://x.invalid"}, None, "the template has no mirror 'backup'"),
    ({"nosuchvar": "1"}, None, "the template has no variable 'nosuchvar'"),
    ({"options.speed": "fast"}, None, "unknown option"),
    ({"options.trim_docs": "perhaps"}, None, "expected true or false"),
    ({"options.compression": "lz4"}, None, "compression 'lz4' is not supported"),
    ({"a.b.c": "1"}, None, "cannot override 'a.b.c'"),
    ({}, "pacman", "unknown backend 'pacman'"),
    ({}, "dnf", "backend 'dnf' cannot build testdist"),
])
def test_bad_overrides(ws: Workspace, overrides: dict[str, str], backend: str | None,
                       msg: str) -> None:
    with pytest.raises(UsageError, match=msg):
        make_plan("testdist-1", ws.settings, overrides=overrides, backend=backend, env={})


CLI_CASES = ["yaml-syntax", "unknown-top-key", "undefined-var-repo", "fingerprint-mismatch",
             "extends-cycle", "unknown-backend", "script-missing", "no-packages"]


@pytest.mark.parametrize("name", CLI_CASES)
def test_cli_validate_bad(ws: Workspace, name: str) -> None:
    case = CASES[name]
    path = ws.replace(case.old, case.new)
    r = subprocess.run([sys.executable, "-m", "vzpkg.cli.vzpkg", "--workspace", str(ws.root),
                        "validate", str(path)], capture_output=True, text=True, check=False,
                       env={"PATH": "/usr/bin:/bin", "VZPKG_CONFIG": "/nonexistent"})
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert f"{path}:" in r.stderr
    assert case.msg in r.stderr
    if case.key:
        assert case.key in r.stderr


def test_cli_validate_reports_each_file(ws: Workspace) -> None:
    good = ws.template
    bad = ws.write(good.read_text().replace("testdist", "brokendist").replace(
        "backend: debootstrap", "backend: nope"), "brokendist.yaml")
    r = subprocess.run([sys.executable, "-m", "vzpkg.cli.vzpkg", "--workspace", str(ws.root),
                        "validate", str(good), str(bad)], capture_output=True, text=True,
                       check=False, env={"PATH": "/usr/bin:/bin",
                                         "VZPKG_CONFIG": "/nonexistent"})
    assert r.returncode == 1
    assert f"ok    {good} (8 plans)" in r.stdout
    assert f"FAIL  {bad}:4: backend: unknown backend 'nope'" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_show_unknown_release_exit_code(ws: Workspace) -> None:
    r = subprocess.run([sys.executable, "-m", "vzpkg.cli.vzpkg", "--workspace", str(ws.root),
                        "show", "testdist-7"], capture_output=True, text=True, check=False,
                       env={"PATH": "/usr/bin:/bin", "VZPKG_CONFIG": "/nonexistent"})
    assert r.returncode == 1
    assert r.stderr.startswith(f"vzpkg: error: {ws.template}:")
    assert "hint: defined: 1, 2" in r.stderr
    assert "Traceback" not in r.stderr
