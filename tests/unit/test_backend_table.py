"""The static backend tables: get_backend imports the one module BACKENDS names,
and templates are checked against BACKEND_FAMILIES, so a backend missing from the table
(or listed with the wrong module or family) would be unusable or misjudged."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import vzpkg.build.backends
from vzpkg.build.backends import BACKENDS, Backend, backend_families, backend_names, get_backend
from vzpkg.core.errors import VzError
from vzpkg.template.model import BACKEND_FAMILIES


def test_the_table_matches_the_classes_the_modules_register() -> None:
    for mod in pkgutil.iter_modules(vzpkg.build.backends.__path__):
        importlib.import_module(f"vzpkg.build.backends.{mod.name}")
    mine = {name: cls for name, cls in Backend.registry.items()
            if cls.__module__.startswith("vzpkg.build.backends.")}
    assert {n: c.__module__.removeprefix("vzpkg.build.backends.")
            for n, c in mine.items()} == BACKENDS
    assert {n: c.family for n, c in mine.items()} == BACKEND_FAMILIES
    for name in BACKENDS:
        assert get_backend(name) is Backend.registry[name]


def test_names_and_families_come_from_the_table() -> None:
    assert backend_names() == ["debootstrap", "dnf", "mmdebstrap"]
    assert backend_families() == {"debootstrap": "deb", "mmdebstrap": "deb", "dnf": "rpm"}


def test_an_unknown_backend_names_the_known_ones() -> None:
    with pytest.raises(VzError) as exc:
        get_backend("pacman")
    assert exc.value.message == "unknown backend 'pacman'"
    assert exc.value.hint == "known backends: debootstrap, dnf, mmdebstrap"
