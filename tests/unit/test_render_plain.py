"""Plain ``{{ name }}`` substitutions are rendered without Jinja2; whatever the
fast path renders must be exactly what Jinja2 renders, and whatever it cannot
render exactly (other constructs, undefined names, non-strings) goes to Jinja2,
errors included."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import jinja2
import pytest

from vzpkg.core.errors import TemplateError
from vzpkg.template.render import Renderer
from vzpkg.template.yamlpos import Lines

ROOT = Path(__file__).resolve().parents[2]

CONTEXT: dict[str, Any] = {
    "codename": "bookworm", "release": "12", "port": 8080, "flag": True,
    "mirrors": {"debian": "http://m.example/debian", "items": "x", "get": "y"},
    "empty": "",
}

TEXTS = [
    "{{ codename }}",
    "{{codename}}-updates",
    "{{ mirrors.debian }}/dists/{{ codename }}",
    "a { b } c {{ release }}",
    "{{ release }}\n",
    "{{{ codename }}",
    "{{ codename }}}",
    "{{ mirrors.items }}",           # Jinja2: the dict method, not the key
    "{{ mirrors.get }}",
    "{{ port }}",                    # not a string: Jinja2 decides
    "{{ flag }}",
    "{{ empty }}x",
    "{{ codename | upper }}",
    "{{- codename }}",
    "{% if release %}{{ codename }}{% endif %}",
    "{# note #}{{ codename }}",
    "{{ codename }}\r\n",
    "{{ mirrors['debian'] }}",
]


def renderer() -> Renderer:
    return Renderer(Lines("t.yaml"), context=dict(CONTEXT))


@pytest.mark.parametrize("text", TEXTS)
def test_the_result_is_jinja2s(text: str) -> None:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False,
                             keep_trailing_newline=True)
    try:
        want = env.from_string(text).render(CONTEXT)
    except jinja2.TemplateError:
        with pytest.raises(TemplateError):
            renderer().render_str(text, ("k",))
        return
    assert renderer().render_str(text, ("k",)) == want


def test_plain_substitutions_do_not_need_jinja2() -> None:
    r = renderer()
    assert r.render_str("{{ mirrors.debian }}/{{ codename }}", ("k",)) == \
        "http://m.example/debian/bookworm"
    assert r._jinja is None
    r.render_str("{{ codename | upper }}", ("k",))
    assert r._jinja is not None


@pytest.mark.parametrize("text", ["{{ nosuch }}", "{{ mirrors.nosuch }}",
                                  "{{ codename.nosuch }}"])
def test_undefined_names_fail_as_before(text: str) -> None:
    with pytest.raises(TemplateError, match="undefined variable"):
        renderer().render_str(text, ("repositories", 0, "url"))


def test_a_plan_of_plain_substitutions_is_made_without_importing_jinja2() -> None:
    code = ("import sys\n"
            "from vzpkg.template.render import Renderer\n"
            "from vzpkg.template.yamlpos import Lines\n"
            "r = Renderer(Lines('t'), context={'a': {'b': 'c'}})\n"
            "assert r.render_str('{{ a.b }}/x', ()) == 'c/x'\n"
            "print('jinja2' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "False"
