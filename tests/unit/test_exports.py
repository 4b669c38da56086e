"""Every lazily exported public name resolves to the object, never to a same-named submodule."""

from __future__ import annotations

import importlib
import pkgutil
import types

import pytest

import dwi_mtl

PACKAGES = ["dwi_mtl.data", "dwi_mtl.training", "dwi_mtl.mtl", "dwi_mtl.models"]


@pytest.mark.parametrize("package_name", PACKAGES)
def test_exports_resolve_to_objects_after_all_submodules_are_imported(package_name: str) -> None:
    package = importlib.import_module(package_name)
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package_name}.{info.name}")  # binds submodules on the package
    for name in getattr(package, "__all__", []):
        value = getattr(package, name)
        assert not isinstance(value, types.ModuleType), f"{package_name}.{name} is a module"


def test_top_level_import_is_cheap() -> None:
    assert dwi_mtl.__version__
