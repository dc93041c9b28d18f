"""YAML loading that keeps the line of every key and list item.

:func:`load_yaml` returns plain Python data (dicts, lists, scalars) plus a
:class:`Lines` map from key paths such as ``("sets", "minimal", "packages", 2)``
to 1-based line numbers, so that later checks can name the line a user must
fix.  Duplicate keys are refused (PyYAML silently keeps the last one).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vzpkg.core.errors import TemplateError

PathKey = tuple[str | int, ...]


def dotted(path: Iterable[str | int]) -> str:
    """``("sets", "minimal", "packages", 2)`` -> ``sets.minimal.packages[2]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


@dataclass(frozen=True)
class Lines:
    """Line numbers of a loaded document, keyed by path."""

    file: str
    by_path: dict[PathKey, int] = field(default_factory=dict)

    def line(self, path: Iterable[str | int]) -> int | None:
        """The line of *path*, or of its nearest ancestor that has one."""
        p = tuple(path)
        while p:
            if p in self.by_path:
                return self.by_path[p]
            p = p[:-1]
        return self.by_path.get((), None)

    def error(self, path: Iterable[str | int], message: str, *,
              hint: str | None = None) -> TemplateError:
        p = tuple(path)
        return TemplateError(message, file=self.file, line=self.line(p),
                             key=dotted(p) or None, hint=hint)


class _Loader(yaml.SafeLoader):
    """SafeLoader; the walk below does the construction with positions."""


def _walk(loader: _Loader, node: yaml.Node, path: PathKey, lines: Lines) -> Any:
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if isinstance(key, (bool, float)) or not isinstance(key, (str, int)):
                raise TemplateError(
                    f"mapping key {key_node.value!r} is read as {type(key).__name__}, "
                    "not as text", file=lines.file, line=key_node.start_mark.line + 1,
                    key=dotted(path) or None,
                    hint=f"quote it: \"{key_node.value}\": (YAML reads 9.10 as 9.1 "
                         "and yes/no as booleans)")
            skey = str(key)
            if skey in out:
                raise TemplateError(f"duplicate key {skey!r}", file=lines.file,
                                    line=key_node.start_mark.line + 1,
                                    key=dotted((*path, skey)),
                                    hint="each key may appear only once in a mapping")
            sub = (*path, skey)
            lines.by_path[sub] = key_node.start_mark.line + 1
            out[skey] = _walk(loader, value_node, sub, lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        items: list[Any] = []
        for i, item in enumerate(node.value):
            sub = (*path, i)
            lines.by_path[sub] = item.start_mark.line + 1
            items.append(_walk(loader, item, sub, lines))
        return items
    return loader.construct_object(node, deep=True)


def load_yaml(text: str, file: str) -> tuple[Any, Lines]:
    """Parse *text*; YAML errors become TemplateError with file and line."""
    lines = Lines(file)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, lines
        lines.by_path[()] = node.start_mark.line + 1
        return _walk(loader, node, (), lines), lines
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        what = " ".join(x for x in (exc.context, exc.problem) if x)
        raise TemplateError(f"YAML syntax error: {what}", file=file, line=line,
                            hint="check indentation, colons and quoting near this "
                                 "line") from None
    except yaml.YAMLError as exc:
        raise TemplateError(f"YAML error: {exc}", file=file) from None
    finally:
        loader.dispose()


def load_yaml_file(path: Path) -> tuple[Any, Lines]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TemplateError("no such template file", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"cannot read template: {exc}", file=str(path)) from None
    return load_yaml(text, str(path))
