"""From a cache name to a frozen, digested :class:`Plan`.

Public API::

    make_plan("debian-12", settings)                -> Plan (digest set)
    all_plan_names(settings)                        -> ["debian-11-aarch64-default", ...]
    list_templates(settings)                        -> [TemplateInfo, ...]
    validate_file(path, settings)                   -> None or TemplateError
    parse_cache_name("debian-12-x86_64-minimal")    -> ("debian", "12", "x86_64", "minimal")

Environment: ``VZPKG_MIRROR_<NAME>=URL`` overrides ``mirrors.<name>``
(e.g. ``VZPKG_MIRROR_DEBIAN``, ``VZPKG_MIRROR_DEBIAN_SECURITY``);
``VZPKG_SET_<NAME>=VALUE`` overrides the template variable ``<name>``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vzpkg.core.errors import TemplateError, UsageError
from vzpkg.core.settings import Settings
from vzpkg.core.types import Compression, host_arch
from vzpkg.template.assets import load_key, load_script
from vzpkg.template.document import (
    Template,
    TemplateInfo,
    backend_families,
    find_template,
    info,
    load_template,
    matches,
    set_chain,
    template_files,
)
from vzpkg.template.hostmirror import APT_DIR
from vzpkg.template.model import (
    Key,
    Options,
    Plan,
    Repository,
    Script,
    ScriptStage,
    plan_digest,
)
from vzpkg.template.render import Overrides, Renderer, build_context, flat_variables
from vzpkg.template.render import split_overrides as _split

DEFAULT_SET = "minimal"
_PART = r"[A-Za-z0-9][A-Za-z0-9_.]*"

__all__ = ["TemplateInfo", "all_plan_names", "host_arch", "list_templates", "make_plan",
           "parse_cache_name", "plan_for", "validate_file"]


def parse_cache_name(name: str) -> tuple[str, str, str, str]:
    """``dist-release-arch-set``; ``dist-release`` means host arch, set minimal."""
    parts = name.split("-")
    if all(re.fullmatch(_PART, p) for p in parts):
        if len(parts) == 4:
            return parts[0], parts[1], parts[2], parts[3]
        if len(parts) == 2:
            return parts[0], parts[1], host_arch(), DEFAULT_SET
    raise UsageError(f"{name!r} is not a cache name",
                     hint="use <distribution>-<release>-<arch>-<set>, e.g. "
                          "debian-12-x86_64-minimal, or the short form debian-12")


def make_plan(name: str, settings: Settings, *, overrides: Mapping[str, str] = {},
              env: Mapping[str, str] | None = None, backend: str | None = None,
              apt_dir: Path = APT_DIR) -> Plan:
    """The build plan for cache *name* (full or short form)."""
    parts = name.split("-")
    if len(parts) == 3 and all(re.fullmatch(_PART, p) for p in parts):
        # dist-release-arch or dist-release-set: decided by the template
        tpl = load_template(find_template(parts[0], settings))
        arch, set_name = ((parts[2], DEFAULT_SET) if parts[2] in tpl.architectures
                          else (host_arch(), parts[2]))
        return plan_for(tpl, parts[1], arch, set_name, settings, overrides=overrides,
                        env=env, backend=backend, apt_dir=apt_dir)
    dist, release, arch, set_name = parse_cache_name(name)
    tpl = load_template(find_template(dist, settings))
    return plan_for(tpl, release, arch, set_name, settings, overrides=overrides,
                    env=env, backend=backend, apt_dir=apt_dir)


def all_plan_names(settings: Settings) -> list[str]:
    """Every <distribution>-<release>-<arch>-<set> the templates define.

    Templates that fail to load are skipped (``vzpkg validate`` reports them).
    """
    out: list[str] = []
    for path in template_files(settings).values():
        try:
            tpl = load_template(path)
        except TemplateError:
            continue
        out += [f"{tpl.distribution}-{r}-{a}-{s}" for r in tpl.releases
                for a in tpl.architectures for s in tpl.sets]
    return sorted(out)


def list_templates(settings: Settings) -> list[TemplateInfo]:
    return [info(p) for p in template_files(settings).values()]


def validate_file(path: Path, settings: Settings, *, env: Mapping[str, str] | None = None,
                  apt_dir: Path = APT_DIR) -> int:
    """Load *path* and render every release/arch/set; returns the plan count."""
    tpl = load_template(path)
    n = 0
    for r in tpl.releases:
        for a in tpl.architectures:
            for s in tpl.sets:
                plan_for(tpl, r, a, s, settings, env=env, apt_dir=apt_dir)
                n += 1
    return n


def plan_for(tpl: Template, release: str, arch: str, set_name: str, settings: Settings,
             *, overrides: Mapping[str, str] = {}, env: Mapping[str, str] | None = None,
             backend: str | None = None, apt_dir: Path = APT_DIR) -> Plan:
    """Render one release/arch/set of a loaded template into a Plan."""
    for what, value, known in (("release", release, tpl.releases),
                               ("architecture", arch, tpl.architectures),
                               ("set", set_name, tpl.sets)):
        if value not in known:
            field = {"release": "releases", "architecture": "architectures"}.get(what, "sets")
            raise tpl.error((field,), f"{tpl.distribution} has no {what} {value!r}",
                            hint=f"defined: {', '.join(known)}")
    env = os.environ if env is None else env
    try:
        ov = _split(overrides, env, settings.mirror_overrides())
    except TemplateError as exc:
        raise UsageError(exc.message, hint=exc.hint) from None
    families = backend_families()
    backend_name = backend or tpl.backend
    if backend_name not in families:
        raise UsageError(f"unknown backend {backend_name!r}",
                         hint=f"expected one of: {', '.join(sorted(families))}")
    if families[backend_name] != families[tpl.backend]:
        raise UsageError(
            f"backend {backend_name!r} cannot build {tpl.distribution} (a "
            f"{families[tpl.backend]} distribution)",
            hint="choose one of: " + ", ".join(
                sorted(n for n, f in families.items() if f == families[tpl.backend])))
    family = families[backend_name]
    data = tpl.data
    target_arch = str(data.get("arch_map", {}).get(arch, arch))
    r = Renderer(tpl.lines, apt_dir)
    try:
        build_context(data, r, ov, release=release, arch=arch, target_arch=target_arch,
                      set_name=set_name)
    except TemplateError as exc:
        if exc.file == "--set":
            raise UsageError(exc.message, hint=exc.hint) from None
        raise
    chain = set_chain(tpl, set_name)
    plan = Plan(
        name=f"{tpl.distribution}-{release}-{arch}-{set_name}",
        distribution=tpl.distribution, release=release, arch=arch,
        target_arch=target_arch, set_name=set_name, backend=backend_name,
        template_file=tpl.file, variables=flat_variables(r.context),
        repositories=_repositories(tpl, r, family, release, arch),
        keys=_keys(tpl, r, settings, release, arch),
        packages=_packages(tpl, r, chain, release, arch),
        scripts=_scripts(tpl, r, settings, chain),
        options=_options(tpl, chain, ov),
    )
    return dataclasses.replace(plan, digest=plan_digest(plan))


def _repositories(tpl: Template, r: Renderer, family: str, release: str,
                  arch: str) -> tuple[Repository, ...]:
    out: list[Repository] = []
    for i, item in enumerate(tpl.data["repositories"]):
        if not matches(item, release, arch):
            continue
        path = ("repositories", i)
        body = {k: v for k, v in item.items() if k not in ("releases", "architectures")}
        rendered: dict[str, Any] = r.render(body, path)
        if any(x.name == rendered["name"] for x in out):
            raise tpl.error((*path, "name"), f"duplicate repository {rendered['name']!r}")
        if family == "deb":
            for k in ("url", "suite"):
                if not rendered.get(k):
                    raise tpl.error(path, f"a Debian repository needs {k!r}",
                                    hint="e.g. {name: main, url: '{{ mirrors.debian }}', "
                                         "suite: '{{ codename }}', components: [main]}")
            for k in ("metalink", "mirrorlist"):
                if k in rendered:
                    raise tpl.error((*path, k), f"{k!r} is for RPM repositories")
        elif "suite" in rendered or "components" in rendered:
            k = "suite" if "suite" in rendered else "components"
            raise tpl.error((*path, k), f"{k!r} is for Debian repositories",
                            hint="RPM repositories use url (baseurl), metalink or "
                                 "mirrorlist")
        for k in ("url", "metalink", "mirrorlist"):
            v = rendered.get(k)
            if v is not None and not re.fullmatch(r"(https?|file|ftp)://\S+", v):
                raise tpl.error((*path, k), f"{v!r} is not a URL",
                                hint="expected http://, https://, ftp:// or file://")
        rendered.setdefault("components", ["main"] if family == "deb" else [])
        rendered["components"] = tuple(rendered["components"])
        out.append(Repository(**rendered))
    if not out:
        raise tpl.error(("repositories",),
                        f"no repository applies to release {release}, arch {arch}",
                        hint="check the releases:/architectures: filters")
    return tuple(out)


def _keys(tpl: Template, r: Renderer, settings: Settings, release: str,
          arch: str) -> tuple[Key, ...]:
    out: list[Key] = []
    for i, item in enumerate(tpl.data["keys"]):
        if not matches(item, release, arch):
            continue
        path = ("keys", i)
        key = load_key(tpl, path, r.render_str(item["file"], (*path, "file")),
                       r.render_str(item["fingerprint"], (*path, "fingerprint")),
                       settings.template_dirs)
        if all(k.fingerprint != key.fingerprint for k in out):
            out.append(key)
    if not out:
        raise tpl.error(("keys",), f"no key applies to release {release}, arch {arch}",
                        hint="every build verifies its repositories: pin at least one key")
    return tuple(out)


def _packages(tpl: Template, r: Renderer, chain: list[str], release: str,
              arch: str) -> tuple[str, ...]:
    pkgs: set[str] = set()
    for set_name in chain:
        for j, item in enumerate(tpl.data["sets"][set_name].get("packages", [])):
            if not matches(item, release, arch):
                continue
            path = ("sets", set_name, "packages", j)
            raw = item["name"] if isinstance(item, dict) else item
            name = r.render_str(str(raw), (*path, "name") if isinstance(item, dict) else path)
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9+._:@/()<>=*-]*", name.strip()):
                raise tpl.error(path, f"{name!r} is not a package name")
            pkgs.add(name.strip())
    if not pkgs:
        last = chain[-1]
        raise tpl.error(("sets", last), f"set {last!r} has no packages for release "
                        f"{release}, arch {arch}",
                        hint="add packages, or extend a set that has some")
    return tuple(sorted(pkgs))


def _scripts(tpl: Template, r: Renderer, settings: Settings,
             chain: list[str]) -> tuple[Script, ...]:
    chosen: dict[ScriptStage, tuple[tuple[str | int, ...], str]] = {}
    sources: list[tuple[tuple[str | int, ...], Mapping[str, Any]]] = [
        (("scripts",), tpl.data.get("scripts", {}))]
    sources += [(("sets", s, "scripts"), tpl.data["sets"][s].get("scripts", {}))
                for s in chain]
    for base, scripts in sources:
        for stage_name, text in scripts.items():
            chosen[ScriptStage(stage_name)] = ((*base, stage_name), text)
    out: list[Script] = []
    for stage in ScriptStage:
        if stage in chosen:
            path, text = chosen[stage]
            out.append(load_script(tpl, path, stage, r.render_str(text, path),
                                   settings.hook_dirs))
    return tuple(out)


def _options(tpl: Template, chain: list[str], ov: Overrides) -> Options:
    merged: dict[str, Any] = dict(tpl.data.get("options", {}))
    for s in chain:
        merged.update(tpl.data["sets"][s].get("options", {}))
    fields = {f.name: f for f in dataclasses.fields(Options)}
    for k, v in ov.options.items():
        if k not in fields:
            raise UsageError(f"--set options.{k}: unknown option",
                             hint=f"options: {', '.join(fields)}")
        if k in ("variant", "compression"):
            merged[k] = v
        else:
            low = v.lower()
            if low not in ("true", "false", "yes", "no", "1", "0", "on", "off"):
                raise UsageError(f"--set options.{k}={v}: expected true or false")
            merged[k] = low in ("true", "yes", "1", "on")
    if "compression" in merged:
        try:
            merged["compression"] = Compression(merged["compression"])
        except ValueError:
            raise UsageError(f"compression {merged['compression']!r} is not supported",
                             hint="expected one of: zstd, xz, gzip") from None
    return Options(**merged)
