"""The one state protocol of dwi_mtl, seed derivation and RNG capture.

Every stateful object (sampler, loader, trainer, weighting, policy, logger history) implements
:class:`Stateful`: ``state_dict()`` returns plain Python / numpy / torch values and
``load_state_dict(state)`` restores them. The trainer gathers them into one checkpoint.

Randomness that must be reproducible across workers and resumes is never drawn from a global
generator: it is derived from a tuple of integers such as ``(seed, epoch, batch_index)`` with
:func:`derive_seed`, so any process can recompute it without shared state.
"""

from __future__ import annotations

import importlib
import random
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Stateful(Protocol):
    """An object whose state can be saved into and restored from a checkpoint."""

    def state_dict(self) -> dict[str, Any]:
        """Return the object's state as plain values (no references to live objects)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state returned by :meth:`state_dict`."""
        ...


def derive_seed(*keys: int | str) -> int:
    """Derive a 63-bit seed from a tuple of keys, independent of any global RNG.

    Strings are hashed stably (not with Python's salted ``hash``), so the same keys give the
    same seed in every process, worker and run.

    Args:
        *keys: integers (seed, epoch, batch index, ...) or short strings (a context name).

    Returns:
        A non-negative integer usable as a numpy or torch seed.
    """
    entropy: list[int] = []
    for key in keys:
        if isinstance(key, str):
            entropy.extend(key.encode("utf-8"))
            entropy.append(0x5F3759DF)  # separator so ("ab",) != ("a", "b")
        else:
            value = int(key)
            if value < 0:
                raise ValueError(f"derive_seed keys must be non-negative, got {value}")
            entropy.append(value)
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def derive_generator(*keys: int | str) -> np.random.Generator:
    """Return a numpy Generator seeded by :func:`derive_seed` of the keys."""
    return np.random.default_rng(derive_seed(*keys))


def derive_torch_generator(*keys: int | str, device: str = "cpu") -> Any:
    """Return a ``torch.Generator`` on ``device`` seeded by :func:`derive_seed` of the keys."""
    import torch

    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(*keys))
    return generator


def capture_rng_state() -> dict[str, Any]:
    """Capture the global python, numpy, torch and CUDA RNG states.

    Model-side randomness (dropout, weight init) uses the global torch generator; the trainer
    saves it with this function and restores it with :func:`restore_rng_state` *after* the data
    iterator is positioned, so positioning cannot consume draws.
    """
    import torch

    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore states captured by :func:`capture_rng_state` (CUDA only when available)."""
    import torch

    random.setstate(_as_python_random_state(state["python"]))
    np.random.set_state(state["numpy"])
    torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [torch.as_tensor(s, dtype=torch.uint8).cpu() for s in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def _as_python_random_state(value: Any) -> tuple[Any, ...]:
    """Turn a python RNG state that went through serialization (lists) back into tuples."""
    version, internal, gauss = value
    return (version, tuple(internal), gauss)


def class_path(obj_or_cls: Any) -> str:
    """Return the import path ``module.QualName`` of a class or of an object's class."""
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    return f"{cls.__module__}.{cls.__qualname__}"


def import_class(path: str) -> Any:
    """Import and return the class (or callable) named by a ``module.QualName`` path.

    Raises:
        ImportError: when the module or attribute does not exist, naming ``path``.
    """
    module_name, _, qualname = path.rpartition(".")
    if not module_name:
        raise ImportError(f"'{path}' is not a 'module.ClassName' import path")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"cannot import module '{module_name}' of '{path}': {exc}") from exc
    for part in qualname.split("."):
        if not hasattr(obj, part):
            raise ImportError(f"module '{module_name}' has no attribute '{qualname}' ('{path}')")
        obj = getattr(obj, part)
    return obj
