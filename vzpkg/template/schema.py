"""The template JSON Schema: load it, validate against it, explain failures.

The schema file ships beside this module (``schema.json``) so editors can use
it too (``vzpkg schema``).  jsonschema's messages are rewritten into
TemplateErrors that name the file, the line of the offending key and its path.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:   # jsonschema is imported only when a template is not known good
    import jsonschema
    from jsonschema.exceptions import ValidationError

from vzpkg.core.errors import TemplateError
from vzpkg.core.settings import user_cache_dir
from vzpkg.template.yamlpos import Lines

SCHEMA_FILE = Path(__file__).resolve().parent / "schema.json"
SCHEMA_VERSION = 1

_TYPE_WORDS = {
    dict: "a mapping", list: "a list", str: "a string", int: "an integer",
    float: "a number", bool: "true or false", type(None): "nothing",
}
_SCHEMA_TYPE_WORDS = {
    "object": "a mapping", "array": "a list", "string": "a string",
    "integer": "an integer", "number": "a number", "boolean": "true or false",
    "null": "null",
}


_NAME_HINT = ("names use letters, digits, '_' and '.' only (no '-': it separates the "
              "parts of a cache name); variable names must be identifiers")


def schema_text() -> str:
    return SCHEMA_FILE.read_text(encoding="utf-8")


@functools.cache
def schema() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(schema_text())
    return data


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    import jsonschema
    return jsonschema.Draft202012Validator(schema())


def _known_good_dir() -> Path:
    return user_cache_dir() / "schema-ok"


def _digest(data: Any) -> str:
    """Names this exact document under this exact schema."""
    h = hashlib.sha256(schema_text().encode())
    h.update(json.dumps(data, sort_keys=True, default=repr).encode())
    return h.hexdigest()


def _what(value: Any) -> str:
    return _TYPE_WORDS.get(type(value), type(value).__name__)


def _expected_types(t: Any) -> str:
    names = [t] if isinstance(t, str) else [n for n in t if not (n == "number" and
                                                                "integer" in t)]
    words = [_SCHEMA_TYPE_WORDS.get(n, n) for n in names]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _explain(err: ValidationError, lines: Lines) -> TemplateError:
    path = tuple(err.absolute_path)
    v = err.validator
    vv: Any = err.validator_value
    inst = err.instance
    sch = err.schema if isinstance(err.schema, dict) else {}
    if v == "additionalProperties" and isinstance(inst, dict):
        allowed = sorted(sch.get("properties", {}))
        extra = [k for k in inst if k not in sch.get("properties", {})]
        key = extra[0] if extra else ""
        return lines.error((*path, key), f"unknown key {key!r}",
                           hint=f"expected one of: {', '.join(allowed)}" if allowed
                           else "remove it")
    if v == "required":
        missing = str(vv[0])
        for name in vv:
            if isinstance(inst, dict) and name not in inst:
                missing = str(name)
                break
        where = f"in {'.'.join(str(p) for p in path)}" if path else "at the top level"
        return lines.error(path, f"missing required key {missing!r} {where}",
                           hint=f"add '{missing}:' to this mapping")
    if v == "type":
        got = _what(inst) if inst is None else f"{_what(inst)} ({inst!r:.60})"
        return lines.error(path, f"expected {_expected_types(vv)}, got {got}")
    if v == "const" and path == ("schema",):
        return lines.error(path, f"unsupported schema version {inst!r}",
                           hint=f"this vzpkg reads 'schema: {SCHEMA_VERSION}'")
    if v == "enum":
        opts = ", ".join(str(x) for x in vv)
        return lines.error(path, f"{inst!r} is not allowed", hint=f"expected one of: {opts}")
    if v == "pattern":
        if "propertyNames" in err.schema_path:
            # jsonschema reports a bad key name at the parent mapping's path
            return lines.error((*path, str(inst)), f"{inst!r} is not a valid name here",
                               hint=_NAME_HINT)
        return lines.error(path, f"{inst!r} is not a valid name", hint=_NAME_HINT)
    if v in ("minItems", "minProperties"):
        return lines.error(path, "must not be empty")
    if v == "minLength":
        return lines.error(path, "must not be an empty string")
    if v == "uniqueItems":
        return lines.error(path, "has duplicate entries")
    if v == "anyOf" and len(path) == 2 and path[0] == "repositories" and \
            isinstance(inst, dict) and {"url", "metalink", "mirrorlist"}.isdisjoint(inst):
        return lines.error(path, "a repository needs 'url', 'metalink' or 'mirrorlist'")
    if v == "anyOf" and err.context:
        # prefer the branch of the right type: its error says what is wrong inside
        deeper = [c for c in err.context if c.path]
        typed = [c for c in err.context if c.validator != "type"]
        from jsonschema.exceptions import best_match
        best = best_match(deeper or typed or err.context)
        if best is not None:
            return _explain(best, lines)
    return lines.error(path, err.message)


def validate(data: Any, lines: Lines) -> None:
    """Raise TemplateError for the first schema violation (by line).

    A document that passed before (same bytes, same schema) is remembered by its
    digest in ~/.cache/vzpkg/schema-ok, so commands skip loading jsonschema
    (a tenth of a second) for templates that did not change."""
    marker = _known_good_dir() / _digest(data)
    if marker.exists():
        return
    errors = list(_validator().iter_errors(data))
    if not errors:
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        except OSError:
            pass        # a read-only home: validate every time
        return
    errors.sort(key=lambda e: (lines.line(tuple(e.absolute_path)) or 0,
                               len(e.absolute_path)))
    raise _explain(errors[0], lines)
