"""Jinja2 rendering of template strings, and the variables they see.

Variables, in the order they are built (later ones may use earlier ones):

- ``distribution``, ``release``, ``arch`` (vzpkg's name, e.g. x86_64),
  ``target_arch`` (the distribution's name, e.g. amd64, from ``arch_map``),
  ``set``, and every key of the release's mapping (``codename``, ...);
- ``mirrors.<name>`` from the template's ``mirrors:``;
- the template's ``variables:``.

Overrides, weakest first: the template; ``/etc/vzpkg/mirrors.yaml`` and the
configuration's ``mirrors:`` (mirrors only); the environment
(``VZPKG_MIRROR_<NAME>=URL``, ``VZPKG_SET_<NAME>=VALUE``); ``--set``
(``mirrors.<name>=URL``, ``<name>=VALUE`` or ``variables.<name>=VALUE``).
An overridden value is used literally and its template text is never rendered,
so ``--set mirrors.debian=URL`` works on a host without apt sources.

Globals: ``host_mirror(name)`` (see :mod:`vzpkg.template.hostmirror`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vzpkg.core.errors import TemplateError
from vzpkg.template.assign import parse_assignments
from vzpkg.template.hostmirror import APT_DIR, host_mirror
from vzpkg.template.yamlpos import Lines, PathKey, dotted

# ``{{ name }}`` or ``{{ name.key }}``: the form most template strings take
_PLAIN_EXPR = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)(?:\.([A-Za-z_][A-Za-z0-9_]*))?\s*\}\}")

RESERVED = ("distribution", "release", "arch", "target_arch", "set", "mirrors",
            "host_mirror")


def env_name(name: str) -> str:
    """The environment-variable spelling of a mirror or variable name."""
    return re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def fmt(value: Any) -> str:
    """A scalar as a variable string (YAML booleans as true/false)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass
class Renderer:
    """Renders strings of one template for one release/arch/set."""

    lines: Lines
    apt_dir: Path = APT_DIR
    context: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._jinja: Any = None
        self._path: PathKey = ()

    def _env(self) -> Any:
        """The Jinja2 environment, made on first need: importing jinja2 costs some
        40 ms, and strings with plain substitutions only do without it."""
        if self._jinja is None:
            import jinja2
            self._jinja = jinja2.Environment(undefined=jinja2.StrictUndefined,
                                             autoescape=False, keep_trailing_newline=True)
            self._jinja.globals["host_mirror"] = self._host_mirror
        return self._jinja

    def _host_mirror(self, name: str) -> str:
        try:
            return host_mirror(name, self.apt_dir)
        except TemplateError as exc:
            raise self.lines.error(self._path, exc.message, hint=exc.hint) from None

    def render(self, value: Any, path: PathKey) -> Any:
        """Render every string in *value* (recursively); others pass through."""
        if isinstance(value, str):
            return self.render_str(value, path)
        if isinstance(value, list):
            return [self.render(v, (*path, i)) for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {k: self.render(v, (*path, k)) for k, v in value.items()}
        return value

    def render_str(self, text: str, path: PathKey) -> str:
        if "{" not in text:
            return text
        plain = self._plain(text)
        if plain is not None:
            return plain
        self._path = path
        env = self._env()
        import jinja2  # loaded by _env already
        try:
            return str(env.from_string(text).render(self.context))
        except jinja2.UndefinedError as exc:
            known = ", ".join(sorted(self.context))
            raise self.lines.error(path, f"undefined variable: {exc.message}",
                                   hint=f"defined variables: {known}") from None
        except jinja2.TemplateSyntaxError as exc:
            raise self.lines.error(path, f"Jinja2 syntax error: {exc.message}",
                                   hint="check the {{ }} / {% %} delimiters") from None
        except TemplateError:
            raise
        except Exception as exc:
            raise self.lines.error(path, f"cannot render {text!r}: {exc}") from None

    def _plain(self, text: str) -> str | None:
        """*text* rendered without Jinja2 when its only expressions are
        ``{{ name }}`` / ``{{ name.key }}`` naming strings; None otherwise (any
        other construct, an undefined name or a value that is not a string is
        left to Jinja2, so results and errors are exactly Jinja2's)."""
        if "\r" in text:          # Jinja2 normalises line ends
            return None
        out: list[str] = []
        pos = 0
        for m in _PLAIN_EXPR.finditer(text):
            value = self.context.get(m.group(1))
            key = m.group(2)
            if key is not None:     # Jinja2 looks for an attribute (dict.items) first
                ok = isinstance(value, dict) and not hasattr(dict, key)
                value = value.get(key) if ok else None   # type: ignore[union-attr]
            before = text[pos:m.start()]
            if not isinstance(value, str) or before.endswith("{"):
                return None
            out += [before, value]
            pos = m.end()
        out.append(text[pos:])
        if any(t in lit for lit in out[0::2] for t in ("{{", "{%", "{#")):
            return None
        return "".join(out)


@dataclass(frozen=True)
class Overrides:
    """Where user-supplied values come from, already split by kind."""

    mirrors: dict[str, str]                 # strict: from --set
    variables: dict[str, str]               # strict: from --set
    options: dict[str, str]                 # strict: from --set
    soft_mirrors: dict[str, str]            # from files and env: unknown names ignored
    soft_variables: dict[str, str]          # from env: unknown names ignored


def split_overrides(sets: Mapping[str, str], env: Mapping[str, str],
                    file_mirrors: Mapping[str, str]) -> Overrides:
    mirrors: dict[str, str] = {}
    variables: dict[str, str] = {}
    options: dict[str, str] = {}
    for key, value in sets.items():
        head, _, rest = key.partition(".")
        if head == "mirrors" and rest:
            mirrors[rest] = value
        elif head == "options" and rest:
            options[rest] = value
        elif head == "variables" and rest:
            variables[rest] = value
        elif not rest and key:
            variables[key] = value
        else:
            raise TemplateError(
                f"cannot override {key!r}", file="--set", key=key,
                hint="use mirrors.NAME=URL, options.NAME=VALUE, NAME=VALUE or "
                     "variables.NAME=VALUE")
    soft_m = {env_name(k): v for k, v in file_mirrors.items()}
    soft_v: dict[str, str] = {}
    for k, v in env.items():
        if k.startswith("VZPKG_MIRROR_") and len(k) > 13:
            soft_m[k[13:]] = v
        elif k.startswith("VZPKG_SET_") and len(k) > 10:
            soft_v[k[10:]] = v
    return Overrides(mirrors, variables, options, soft_m, soft_v)


def _check_overrides(what: str, declared: Mapping[str, Any], given: Mapping[str, str], *,
                     prefix: str) -> None:
    """``--set`` may only override a *what* (mirror, variable) the template declares."""
    for name in given:
        if name not in declared:
            raise TemplateError(
                f"the template has no {what} {name!r}", file="--set", key=f"{prefix}{name}",
                hint=f"its {what}s: {', '.join(declared) or 'none'}")


def _overridden(name: str, hard: Mapping[str, str], soft: Mapping[str, str]) -> str | None:
    """``--set`` first, then the environment (``VZPKG_…``); None: the template's own."""
    if name in hard:
        return hard[name]
    return soft.get(env_name(name))


def build_context(tpl_data: Mapping[str, Any], r: Renderer, ov: Overrides, *,
                  release: str, arch: str, target_arch: str, set_name: str) -> None:
    """Fill ``r.context`` with the variables, rendering as it goes."""
    ctx = r.context
    ctx.update(distribution=str(tpl_data["distribution"]), release=release, arch=arch,
               target_arch=target_arch, set=set_name)
    for k, v in tpl_data["releases"][release].items():
        if k in RESERVED:
            raise r.lines.error(("releases", release, k), f"{k!r} is a reserved name",
                                hint=f"reserved: {', '.join(RESERVED)}")
        ctx[k] = r.render(v, ("releases", release, k))

    declared = dict(tpl_data.get("mirrors", {}))
    _check_overrides("mirror", declared, ov.mirrors, prefix="mirrors.")
    mirrors: dict[str, str] = {}
    for name, text in declared.items():
        url = _overridden(name, ov.mirrors, ov.soft_mirrors)
        if url is None:
            url = r.render_str(text, ("mirrors", name))
        mirrors[name] = url.rstrip("/") or url
    ctx["mirrors"] = mirrors

    declared_vars = dict(tpl_data.get("variables", {}))
    _check_overrides("variable", declared_vars, ov.variables, prefix="")
    for name, value in declared_vars.items():
        if name in RESERVED or name in tpl_data["releases"][release]:
            raise r.lines.error(("variables", name), f"variable {name!r} shadows a "
                                "built-in or release variable", hint="rename it")
        given = _overridden(name, ov.variables, ov.soft_variables)
        ctx[name] = given if given is not None else r.render(value, ("variables", name))


def flat_variables(ctx: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The context as sorted (name, string) pairs; mirrors as ``mirrors.NAME``."""
    out: dict[str, str] = {}
    for k, v in ctx.items():
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": fmt(vv) for kk, vv in v.items()})
        else:
            out[k] = fmt(v)
    return tuple(sorted(out.items()))


__all__ = ["Overrides", "Renderer", "build_context", "dotted", "flat_variables",
           "parse_assignments", "split_overrides"]
