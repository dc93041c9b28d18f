"""`vzpkg list | show | validate | schema` through the real entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.metadata_helpers import KEY_FPR, MIRROR, Workspace, make_workspace
from vzpkg.cli.vzpkg import main
from vzpkg.template.schema import SCHEMA_FILE


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    monkeypatch.setenv("VZPKG_CONFIG", str(tmp_path / "no-config.yaml"))
    for var in ("VZPKG_WORKSPACE", "VZPKG_CACHE_DIR"):
        monkeypatch.delenv(var, raising=False)
    w = make_workspace(tmp_path / "ws")
    monkeypatch.chdir(w.root)
    return w


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_list_text_and_json(ws: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "list")
    assert rc == 0
    header, *rows = out.splitlines()
    assert header.split() == ["TEMPLATE", "BACKEND", "RELEASES", "ARCHITECTURES", "SETS"]
    mine = next(r for r in rows if r.startswith("testdist "))
    assert mine.split() == ["testdist", "debootstrap", "1", "2", "x86_64", "aarch64",
                            "minimal", "default"]
    assert any(r.startswith("fedora ") for r in rows)      # shipped ones too
    rc, out, _ = run(capsys, "list", "--json")
    data = json.loads(out)
    t = next(t for t in data["templates"] if t["distribution"] == "testdist")
    assert t["releases"] == ["1", "2"] and t["error"] is None


def test_show_text(ws: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "show", "testdist-2-aarch64-default")
    assert rc == 0
    assert "name:          testdist-2-aarch64-default" in out
    assert f"main         {MIRROR} beta [main]" in out
    assert KEY_FPR in out
    assert "codename = beta" in out


def test_show_json_with_set_and_backend(ws: Workspace,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "show", "testdist-1-x86_64-minimal", "--json")
    base = json.loads(out)
    rc, out, _ = run(capsys, "show", "testdist-1-x86_64-minimal", "--json",
                     "--set", "mirrors.main=http://other.invalid/d", "--backend",
                     "mmdebstrap")
    assert rc == 0
    data = json.loads(out)
    assert data["repositories"][0]["url"] == "http://other.invalid/d"
    assert data["backend"] == "mmdebstrap"
    assert data["digest"] != base["digest"] and len(data["digest"]) == 64
    assert data["template_file"] == str(ws.template)


def test_show_bad_set_syntax(ws: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "show", "testdist-1", "--set", "novalue")
    assert rc == 2
    assert "expected KEY=VALUE" in err


def test_validate_all(ws: Workspace, capsys: pytest.CaptureFixture[str],
                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VZPKG_MIRROR_DEBIAN", "http://mirror.invalid/debian")
    monkeypatch.setenv("VZPKG_MIRROR_DEBIAN_SECURITY", "http://mirror.invalid/sec")
    rc, out, err = run(capsys, "validate")
    assert rc == 0, err
    assert f"ok    {ws.template} (8 plans)" in out
    assert len(out.splitlines()) == 5           # testdist + 4 shipped templates
    rc, out, _ = run(capsys, "validate", "--json", str(ws.template))
    assert json.loads(out) == {"failed": 0, "results": [
        {"file": str(ws.template), "ok": True, "plans": 8}]}


def test_validate_json_failure(ws: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    ws.replace("schema: 1", "schema: 3")
    rc, out, _ = run(capsys, "validate", "--json", str(ws.template))
    assert rc == 1
    res = json.loads(out)["results"][0]
    assert (res["ok"], res["line"], res["key"]) == (False, 1, "schema")


def test_schema(ws: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "schema")
    assert rc == 0
    assert json.loads(out) == json.loads(SCHEMA_FILE.read_text())
