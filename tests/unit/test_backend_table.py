"""The static backend table: get_backend imports the one module the table names,
and the metadata learns families from it, so a backend missing from the table
(or listed with the wrong module or family) would be unusable or misjudged."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import vzpkg.backends
from vzpkg.backends import BACKENDS, Backend, backend_families, backend_names, get_backend
from vzpkg.errors import VzError


def test_the_table_matches_the_classes_the_modules_register() -> None:
    for mod in pkgutil.iter_modules(vzpkg.backends.__path__):
        importlib.import_module(f"vzpkg.backends.{mod.name}")
    registered = {name: (cls.__module__.removeprefix("vzpkg.backends."), cls.family)
                  for name, cls in Backend.registry.items()
                  if cls.__module__.startswith("vzpkg.backends.")}
    assert registered == BACKENDS
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
