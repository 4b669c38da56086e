"""The gradient norm of every step, taken in backward while each gradient is still in cache.

The trainer logs the gradient norm of every optimizer step and checks it for NaN/inf. Computed
after ``backward`` returns, that is one more pass over all the gradients, and on a CPU it is a
pass from main memory: the large gradients have left the core's cache by then (measured here:
~90 us for the 0.8 MB of gradients of a 2 ms step, 4 times the same norm on cached data).
:class:`GradNormHooks` takes the norm of each large gradient in a post-accumulate-grad hook,
right after autograd wrote it, and the few small ones (biases, norms' scales) together at the
end, where one fused call costs less than a hook each.

The result is the same number, bit for bit, whichever way it was taken: each parameter's norm
is ``torch.linalg.vector_norm`` of its gradient (what ``torch._foreach_norm`` computes per
tensor on CPU), the total the norm of those norms (the hooked parameters', then the small
ones', each in parameter order), with 0 for a parameter without gradient.
:meth:`GradNormHooks.total_norm` falls back to computing every norm when a gradient is not the
one its hook saw (restored from a checkpoint mid-cycle, replaced or released by user code), so
an exact resume logs and clips with the same values.

Only used on CPU parameters trained by a plain ``backward`` (no gradient weighting, AMP or
distributed averaging rewrites the gradients after the hooks ran); on CUDA the fused
``_foreach_norm`` after backward is already cheap and one launch instead of one per tensor.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import torch

#: Gradients of at least this many elements get a hook (64 KiB of float32). Below it, a hook's
#: Python call costs more than reading the gradient again from main memory.
HOOK_MIN_NUMEL = 16384


class GradNormHooks:
    """Per-parameter gradient norms recorded by autograd hooks, summed at the optimizer step.

    Args:
        params: the parameters whose total gradient norm is wanted, in a fixed order.
        min_numel: the smallest gradient (in elements) taken in a hook.
    """

    def __init__(self, params: Sequence[torch.Tensor], min_numel: int = HOOK_MIN_NUMEL) -> None:
        self.params = list(params)
        self._big = [i for i, p in enumerate(self.params) if p.numel() >= min_numel]
        self._small = [i for i, p in enumerate(self.params) if p.numel() < min_numel]
        device = self.params[0].device if self.params else torch.device("cpu")
        dtype = self.params[0].dtype if self.params else torch.float32
        # one norm per parameter: the hooked ones' first, then the small ones'
        self._norms = torch.zeros(len(self.params), dtype=dtype, device=device)
        self._slot_views = list(self._norms[:len(self._big)].unbind())
        self._small_norms = self._norms[len(self._big):]
        self._zero = torch.zeros((), dtype=dtype, device=device)
        self._seen: list[Any] = [None] * len(self._big)
        self._handles: list[Any] = []

    @staticmethod
    def supported(params: Sequence[torch.Tensor]) -> bool:
        """Whether the hooks apply: CPU parameters of one floating dtype."""
        if not params:
            return False
        dtype = params[0].dtype
        return all(p.device.type == "cpu" and p.dtype == dtype for p in params) and \
            dtype.is_floating_point

    @property
    def usable(self) -> bool:
        """False once the parameters were moved to another device or dtype than the hooks
        measure in (a model moved after its trainer was built): the caller then measures
        without them."""
        first = self.params[0] if self.params else self._norms
        return first.device == self._norms.device and first.dtype == self._norms.dtype

    @property
    def attached(self) -> bool:
        """Whether the hooks are registered on the parameters."""
        return bool(self._handles)

    def attach(self) -> None:
        """Register the hooks (idempotent). They hold this object weakly."""
        if self._handles:
            return
        owner = weakref.ref(self)
        for slot, index in enumerate(self._big):
            self._handles.append(self.params[index].register_post_accumulate_grad_hook(
                _make_hook(owner, slot)))

    def detach(self) -> None:
        """Remove the hooks and forget the gradients they saw."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.reset()

    def reset(self) -> None:
        """Start a new accumulation cycle: no gradient seen yet."""
        self._seen = [None] * len(self._big)

    def _record(self, slot: int, param: torch.Tensor) -> None:
        grad = param.grad
        if grad is None or grad.is_sparse or grad.requires_grad or \
                grad.dtype != self._norms.dtype or grad.device != self._norms.device:
            self._seen[slot] = None  # not recordable: total_norm computes it afresh
            return
        torch.linalg.vector_norm(grad, out=self._slot_views[slot])
        self._seen[slot] = grad

    @torch.no_grad()
    def total_norm(self) -> torch.Tensor | None:
        """The total gradient norm (a 0-dim tensor); None when no parameter has a gradient."""
        params = self.params
        stale = [slot for slot, index in enumerate(self._big)
                 if params[index].grad is not self._seen[slot]]
        small = [params[i].grad for i in self._small]
        if not any(seen is not None for seen in self._seen) and all(
                params[i].grad is None for i in self._big) and all(g is None for g in small):
            return None
        for slot in stale:
            grad = params[self._big[slot]].grad
            if grad is None:
                self._slot_views[slot].zero_()
            else:
                torch.linalg.vector_norm(grad, out=self._slot_views[slot])
        if small:
            norms = torch._foreach_norm([g if g is not None else self._zero for g in small])
            torch.stack(norms, out=self._small_norms)
        return torch.linalg.vector_norm(self._norms)


def _make_hook(owner: weakref.ref[GradNormHooks], slot: int) -> Any:
    def hook(param: torch.Tensor) -> None:
        hooks = owner()
        if hooks is not None:
            hooks._record(slot, param)
    return hook
