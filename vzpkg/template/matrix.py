"""The build matrix: every template × release × architecture × set, for CI.

:func:`build_matrix` lists the cells (optionally narrowed); :func:`github` and
:func:`gitlab` give them in the shapes the two CI systems take:

* GitHub Actions: ``{"include": [{"template", "release", "arch", "set",
  "name"}, ...]}`` for ``strategy.matrix: ${{ fromJSON(...) }}``;
* GitLab: ``{"parallel": {"matrix": [{"TEMPLATE": "debian", "RELEASE": [...],
  "ARCH": [...], "SET": [...]}, ...]}}``, one item per template (GitLab forms
  the product of the lists), for a job of a generated child pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vzpkg.core.errors import TemplateError, UsageError
from vzpkg.core.settings import Settings
from vzpkg.template.document import find_template, load_template, template_files


@dataclass(frozen=True)
class Cell:
    template: str
    release: str
    arch: str
    set_name: str

    @property
    def name(self) -> str:
        return f"{self.template}-{self.release}-{self.arch}-{self.set_name}"

    def to_json(self) -> dict[str, str]:
        return {"template": self.template, "release": self.release, "arch": self.arch,
                "set": self.set_name, "name": self.name}


def _pick(have: Sequence[str], want: Sequence[str]) -> list[str]:
    if not want:
        return list(have)
    return [v for v in have if v in want]


def build_matrix(settings: Settings, templates: Sequence[str] = (), *,
                 releases: Sequence[str] = (), archs: Sequence[str] = (),
                 sets: Sequence[str] = ()) -> list[Cell]:
    """The cells of the named templates (default: all), narrowed by the filters.

    A template that does not exist or does not load is a TemplateError; so is a
    filter value that no chosen template has (a typo would give an empty job list).
    """
    names = list(templates) or list(template_files(settings))
    cells: list[Cell] = []
    seen = {"release": set[str](), "arch": set[str](), "set": set[str]()}
    for name in dict.fromkeys(names):
        tpl = load_template(find_template(name, settings))
        rs = _pick(tuple(tpl.releases), releases)
        as_ = _pick(tuple(tpl.architectures), archs)
        ss = _pick(tuple(tpl.sets), sets)
        seen["release"].update(tpl.releases)
        seen["arch"].update(tpl.architectures)
        seen["set"].update(tpl.sets)
        cells += [Cell(tpl.distribution, r, a, s) for r in rs for a in as_ for s in ss]
    for key, want in (("release", releases), ("arch", archs), ("set", sets)):
        unknown = [v for v in want if v not in seen[key]]
        if unknown:
            raise UsageError(f"--{key} {', '.join(unknown)}: no chosen template has it",
                             hint=f"the templates have: {', '.join(sorted(seen[key]))}")
    return cells


def github(cells: Sequence[Cell]) -> dict[str, Any]:
    return {"include": [c.to_json() for c in cells]}


def gitlab(cells: Sequence[Cell]) -> dict[str, Any]:
    """One matrix item per (template, release set): GitLab multiplies the lists."""
    by_template: dict[str, dict[str, list[str]]] = {}
    exact: list[dict[str, Any]] = []
    for c in cells:
        d = by_template.setdefault(c.template, {"RELEASE": [], "ARCH": [], "SET": []})
        for key, val in (("RELEASE", c.release), ("ARCH", c.arch), ("SET", c.set_name)):
            if val not in d[key]:
                d[key].append(val)
    for tpl, d in by_template.items():
        exact.append({"TEMPLATE": tpl, **d})
    product = sum(len(d["RELEASE"]) * len(d["ARCH"]) * len(d["SET"])
                  for d in by_template.values())
    if product != len(cells):          # cannot happen with the filters above; be sure
        raise TemplateError("the matrix is not a product per template")
    return {"parallel": {"matrix": exact}}
