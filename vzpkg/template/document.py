"""Template files: find them, load them, and check what the schema cannot.

A template is one YAML file per distribution, ``<distribution>.yaml``, in one
of ``Settings.template_dirs`` (a workspace's ``metadata/`` first, then the
shipped one; the first file with a given name wins).  Loading parses the YAML
with line numbers, validates it against the JSON Schema, and checks the
cross-references: backend, filters naming known releases and architectures,
``extends`` naming known sets without cycles.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vzpkg.core.errors import TemplateError
from vzpkg.core.settings import Settings
from vzpkg.template import schema
from vzpkg.template.model import BACKEND_FAMILIES
from vzpkg.template.yamlpos import Lines, PathKey, load_yaml_file


def backend_families() -> dict[str, str]:
    """Every known backend name -> its family ("deb" or "rpm"), from the table in
    :mod:`vzpkg.template.model`: no backend module is imported to check a template."""
    return dict(BACKEND_FAMILIES)


@dataclass(frozen=True)
class Template:
    """A loaded, schema-valid template file (not yet rendered)."""

    file: Path
    data: dict[str, Any]
    lines: Lines

    @property
    def distribution(self) -> str:
        return str(self.data["distribution"])

    @property
    def backend(self) -> str:
        return str(self.data["backend"])

    @property
    def releases(self) -> tuple[str, ...]:
        return tuple(self.data["releases"])

    @property
    def architectures(self) -> tuple[str, ...]:
        return tuple(str(a) for a in self.data["architectures"])

    @property
    def sets(self) -> tuple[str, ...]:
        return tuple(self.data["sets"])

    def error(self, path: Iterable[str | int], message: str, *,
              hint: str | None = None) -> TemplateError:
        return self.lines.error(path, message, hint=hint)


@dataclass(frozen=True)
class TemplateInfo:
    """One template as ``vzpkg list`` shows it."""

    distribution: str
    file: Path
    backend: str = ""
    description: str = ""
    releases: tuple[str, ...] = ()
    architectures: tuple[str, ...] = ()
    sets: tuple[str, ...] = ()
    error: str | None = None      # set when the file does not load

    def to_json(self) -> dict[str, Any]:
        return {"distribution": self.distribution, "file": str(self.file),
                "backend": self.backend, "description": self.description,
                "releases": list(self.releases),
                "architectures": list(self.architectures),
                "sets": list(self.sets), "error": self.error}


def template_files(settings: Settings) -> dict[str, Path]:
    """Distribution name -> template file; earlier template dirs win."""
    found: dict[str, Path] = {}
    for d in settings.template_dirs:
        if not d.is_dir():
            continue
        for f in sorted(d.iterdir()):
            if f.suffix in (".yaml", ".yml") and f.is_file():
                found.setdefault(f.stem, f)
    return dict(sorted(found.items()))


def find_template(distribution: str, settings: Settings) -> Path:
    files = template_files(settings)
    if distribution not in files:
        dirs = ", ".join(str(d) for d in settings.template_dirs)
        raise TemplateError(
            f"no template for distribution {distribution!r}",
            file=f"{distribution}.yaml",
            hint=f"known distributions: {', '.join(files) or 'none'} (searched {dirs})")
    return files[distribution]


def load_template(path: Path) -> Template:
    """Parse, schema-check and cross-check one template file."""
    data, lines = load_yaml_file(path)
    if not isinstance(data, dict):
        raise TemplateError(
            "expected a mapping at the top level (schema, distribution, backend, ...)"
            if data is not None else "the file is empty",
            file=str(path), line=lines.line(()),
            hint="see 'vzpkg schema' and the shipped templates for the format")
    schema.validate(data, lines)
    tpl = Template(path, data, lines)
    _check(tpl)
    return tpl


def _check(tpl: Template) -> None:
    d = tpl.data
    if tpl.distribution != tpl.file.stem:
        raise tpl.error(("distribution",),
                        f"distribution {tpl.distribution!r} does not match the file name "
                        f"{tpl.file.name!r}",
                        hint=f"rename the file to {tpl.distribution}.yaml or fix the field")
    families = backend_families()
    if tpl.backend not in families:
        raise tpl.error(("backend",), f"unknown backend {tpl.backend!r}",
                        hint=f"expected one of: {', '.join(sorted(families))}")
    for arch in d.get("arch_map", {}):
        if arch not in tpl.architectures:
            raise tpl.error(("arch_map", arch),
                            f"architecture {arch!r} is not listed in 'architectures'",
                            hint=f"architectures: {', '.join(tpl.architectures)}")
    for i, item in enumerate(d["repositories"]):
        _check_filters(tpl, ("repositories", i), item)
    for i, item in enumerate(d["keys"]):
        _check_filters(tpl, ("keys", i), item)
    for name, body in d["sets"].items():
        for j, pkg in enumerate(body.get("packages", [])):
            if isinstance(pkg, dict):
                _check_filters(tpl, ("sets", name, "packages", j), pkg)
        for k, base in enumerate(_extends(body)):
            if base not in d["sets"]:
                where: PathKey = ("sets", name, "extends")
                if isinstance(body["extends"], list):
                    where = (*where, k)
                raise tpl.error(where, f"extends unknown set {base!r}",
                                hint=f"known sets: {', '.join(tpl.sets)}")
    for name in d["sets"]:
        set_chain(tpl, name)    # raises on a cycle


def _check_filters(tpl: Template, path: PathKey, item: dict[str, Any]) -> None:
    for field, known in (("releases", tpl.releases), ("architectures", tpl.architectures)):
        for k, value in enumerate(item.get(field, [])):
            if str(value) not in known:
                raise tpl.error((*path, field, k),
                                f"{field[:-1] if field == 'releases' else 'architecture'} "
                                f"{str(value)!r} is not defined in this template",
                                hint=f"defined: {', '.join(known)}")


def _extends(body: dict[str, Any]) -> list[str]:
    ext = body.get("extends")
    if ext is None:
        return []
    return [ext] if isinstance(ext, str) else list(ext)


def set_chain(tpl: Template, name: str) -> list[str]:
    """*name* and every set it extends, bases first, each once."""
    order: list[str] = []

    def visit(n: str, stack: tuple[str, ...]) -> None:
        if n in stack:
            cycle = " -> ".join((*stack[stack.index(n):], n))
            raise tpl.error(("sets", stack[-1], "extends"), f"extends cycle: {cycle}",
                            hint="a set may not extend itself, directly or indirectly")
        for base in _extends(tpl.data["sets"][n]):
            visit(base, (*stack, n))
        if n not in order:
            order.append(n)

    visit(name, ())
    return order


def matches(item: Any, release: str, arch: str) -> bool:
    """Whether a list item's ``releases`` / ``architectures`` filters admit it."""
    if not isinstance(item, dict):
        return True
    rel = item.get("releases")
    if rel is not None and release not in [str(r) for r in rel]:
        return False
    arches = item.get("architectures")
    return arches is None or arch in [str(a) for a in arches]


def info(path: Path) -> TemplateInfo:
    """Summary of one template; a broken file gives an entry with ``error`` set."""
    try:
        tpl = load_template(path)
    except TemplateError as exc:
        return TemplateInfo(distribution=path.stem, file=path, error=str(exc))
    return TemplateInfo(distribution=tpl.distribution, file=path, backend=tpl.backend,
                        description=str(tpl.data.get("description", "")),
                        releases=tpl.releases, architectures=tpl.architectures,
                        sets=tpl.sets)
