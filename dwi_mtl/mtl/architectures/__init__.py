"""MTL architectures (LibMTL names), each in its own module, working with any encoder.

``get_architecture(name)`` returns the class registered under ``name`` (``"hps"``,
``"cross_stitch"``, ``"mmoe"``, ``"mtan"``, ``"cgc"``, ``"ple"``, ``"dselect_k"``; the class
names are accepted too), as the scripts' configuration files name them.
"""

from __future__ import annotations

import importlib
from typing import Any

from dwi_mtl._lazy import lazy_exports

_EXPORTS = {
    "AbsArchitecture": "abstract_arch",
    "HPS": "hps",
    "Cross_stitch": "cross_stitch",
    "MMoE": "mmoe",
    "MTAN": "mtan",
    "CGC": "cgc",
    "PLE": "ple",
    "DSelect_k": "dselect_k",
}

#: Registry name -> class name (the module is ``_EXPORTS[class name]``).
ARCHITECTURES = {
    "hps": "HPS",
    "cross_stitch": "Cross_stitch",
    "mmoe": "MMoE",
    "mtan": "MTAN",
    "cgc": "CGC",
    "ple": "PLE",
    "dselect_k": "DSelect_k",
}


def get_architecture(name: str) -> Any:
    """Return the architecture class registered under ``name`` (case-insensitive).

    Raises:
        ConfigError: for an unknown name, listing the known ones.
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in ARCHITECTURES:
        from dwi_mtl.errors import ConfigError

        raise ConfigError(f"unknown architecture {name!r}; choose one of {sorted(ARCHITECTURES)}")
    class_name = ARCHITECTURES[key]
    module = importlib.import_module(f"{__name__}.{_EXPORTS[class_name]}")
    return getattr(module, class_name)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted([*_EXPORTS, "ARCHITECTURES", "get_architecture"])
