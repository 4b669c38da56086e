"""Lazy re-exports for package ``__init__`` files (PEP 562).

A subpackage lists ``{public_name: submodule}``; the submodule is imported on first access.
This keeps ``import dwi_mtl.data`` cheap (no torch import) and lets each module stay small.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(
    package: str, exports: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Build ``__getattr__`` and ``__dir__`` for a package that re-exports names lazily.

    Args:
        package: the package's ``__name__``.
        exports: public name -> relative submodule name that defines it.

    Returns:
        The ``(__getattr__, __dir__)`` pair to assign at module level.
    """

    def __getattr__(name: str) -> Any:  # noqa: N807 (module-level protocol name, PEP 562)
        if name not in exports:
            raise AttributeError(f"module '{package}' has no attribute '{name}'")
        module = importlib.import_module(f"{package}.{exports[name]}")
        return getattr(module, name)

    def __dir__() -> list[str]:  # noqa: N807
        return sorted(exports)

    return __getattr__, __dir__
