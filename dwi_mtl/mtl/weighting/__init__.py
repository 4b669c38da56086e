"""MTL loss-weighting and gradient-combination strategies, one module per method.

Every method has the same model-independent API (:class:`AbsWeighting`):
``backward(losses, shared_params, representation=None) -> weights``, ``parameters()``,
``on_step_end(losses)``, ``on_epoch_end(epoch)``, ``state_dict()`` / ``load_state_dict()``.
Build one by name with :func:`get_weighting`.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dwi_mtl._lazy import lazy_exports
from dwi_mtl.errors import ConfigError

if TYPE_CHECKING:
    from dwi_mtl.mtl.weighting.abstract_weighting import AbsWeighting

#: Registry: lower-case name -> (module, class name).
WEIGHTINGS: dict[str, tuple[str, str]] = {
    "ew": ("ew", "EW"),
    "uw": ("uw", "UW"),
    "dwa": ("dwa", "DWA"),
    "gls": ("gls", "GLS"),
    "rlw": ("rlw", "RLW"),
    "gradnorm": ("grad_norm", "GradNorm"),
    "mgda": ("mgda", "MGDA"),
    "pcgrad": ("pcgrad", "PCGrad"),
    "gradvac": ("grad_vac", "GradVac"),
    "graddrop": ("grad_drop", "GradDrop"),
    "cagrad": ("cagrad", "CAGrad"),
    "imtl": ("imtl", "IMTL"),
    "nash_mtl": ("nash_mtl", "Nash_MTL"),
    "aligned_mtl": ("aligned_mtl", "Aligned_MTL"),
    "db_mtl": ("db_mtl", "DB_MTL"),
    "famo": ("famo", "FAMO"),
    "stch": ("stch", "STCH"),
    "excessmtl": ("excess_mtl", "ExcessMTL"),
    "fairgrad": ("fair_grad", "FairGrad"),
    "moco": ("moco", "MoCo"),
    "upgrad": ("upgrad", "UPGrad"),
    "dualproj": ("dual_proj", "DualProj"),
}

_EXPORTS = {cls: module for module, cls in WEIGHTINGS.values()}
_EXPORTS.update(
    {
        "AbsWeighting": "abstract_weighting",
        "LossWeighting": "abstract_weighting",
        "GradientWeighting": "abstract_weighting",
        "GramianWeighting": "abstract_weighting",
        "TaskWeights": "abstract_weighting",
    }
)

_lazy_getattr, _lazy_dir = lazy_exports(__name__, _EXPORTS)


def __getattr__(name: str) -> Any:
    """Lazy access to the weighting classes (PEP 562)."""
    return _lazy_getattr(name)


def __dir__() -> list[str]:
    """Public names, including :func:`get_weighting`."""
    return sorted([*_lazy_dir(), "get_weighting", "WEIGHTINGS"])


def _normalize(name: str) -> str:
    return name.lower().replace("-", "_").replace(" ", "")


def get_weighting(name: str, task_names: Sequence[str], **kwargs: Any) -> AbsWeighting:
    """Build a weighting by name (case-insensitive, ``"Nash_MTL"``, ``"nash-mtl"``, ...).

    Args:
        name: a key of :data:`WEIGHTINGS` or a class name.
        task_names: the tasks.
        **kwargs: the method's constructor arguments (``rep_grad``, ``seed``, ...).

    Returns:
        The weighting.

    Raises:
        ConfigError: unknown name or bad arguments, naming them.
    """
    key = _normalize(name)
    aliases = {_normalize(cls): k for k, (_, cls) in WEIGHTINGS.items()}
    key = aliases.get(key, key)
    if key not in WEIGHTINGS:
        raise ConfigError(f"unknown weighting '{name}'; choose one of {sorted(WEIGHTINGS)}")
    module_name, class_name = WEIGHTINGS[key]
    cls = getattr(importlib.import_module(f"{__name__}.{module_name}"), class_name)
    try:
        return cls(task_names, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"bad arguments for weighting '{name}': {exc}") from exc


__all__ = sorted([*_EXPORTS, "get_weighting", "WEIGHTINGS"])
