"""Per-task passes of a Gramian method that never store or re-read the last task's gradient.

A Gramian method (MGDA, UPGrad, PCGrad, ...) needs ``G = J J^T`` and then ``w @ J``. The generic
path (:func:`~dwi_mtl.mtl.weighting.gradients.loop_gradients`) stores all ``T`` rows of ``J``,
reads them back for ``G``, again for ``w @ J`` into a fresh vector, and points ``.grad`` at it.
Here, in parameter mode:

- the first ``T - 1`` passes store their rows as the generic path does (hooks, while hot);
- during the last pass each shared gradient stays where autograd put it, and a hook adds its
  block's Gramian terms while it is in cache: ``R R^T``, ``R g`` and ``g . g`` (``R`` the stored
  rows' block);
- the combination is written over the last gradient in place, ``g <- w_T g + R^T w_head`` (one
  BLAS ``gemv`` with ``beta`` per parameter), and becomes the parameter's ``.grad``.

The last row is never written to the matrix nor read back, and no combined vector is
allocated. The results equal the generic path's up to float rounding (summation order).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from dwi_mtl.mtl.weighting import gradients as grad_ops

#: Largest number of tasks for which the fused passes are used. Measured A/B against the
#: generic path (batch 256, ~0.66 M shared parameters, one CPU thread): 3% faster at T=2,
#: 2% at T=3, even at T=4, 0.5-2% slower at T=6-8, where the Gramian work done inside the
#: last backward pass evicts that pass's own data from the cache and the saved row is only
#: 1/T of the traffic.
MAX_TASKS = 3


def gramian_backward(
    losses: Sequence[Tensor],
    shared: Sequence[Tensor],
    head: Tensor,
    weights_of: Callable[[Tensor], np.ndarray],
) -> None:
    """Run the ``T`` passes, get the weights from the Gramian, leave ``w @ J`` in ``.grad``.

    Other leaves (heads, loss scales) keep what the passes accumulate into them: their own
    task's gradient. A shared parameter's pre-existing ``.grad`` (gradient accumulation) gets
    the combination added to it.

    Args:
        losses: ``T`` scalar losses sharing one graph.
        shared: the shared parameters (leaves).
        head: ``(T - 1, n)`` storage for the first ``T - 1`` rows.
        weights_of: maps the device ``(T, T)`` Gramian to the host ``(T,)`` weights.

    Raises:
        ConfigError: when a shared tensor is not a leaf.
    """
    saved = grad_ops.set_aside_grads(shared)
    try:
        blocks = _blocks(shared)
        if len(losses) > 1:
            grad_ops.fill_rows(losses[:-1], shared, head, retain_last=True)
        last = _LastPass(shared, head, blocks)
        try:
            if losses[-1].requires_grad:
                torch.autograd.backward(losses[-1])
        finally:
            last.remove()
        weights = weights_of(last.gramian())
        combined = _combine_in_place(shared, head, blocks, last.grads, weights)
    except BaseException:
        for p, g in zip(shared, saved):
            p.grad = g
        raise
    for p, piece, previous in zip(shared, combined, saved):
        if previous is None:
            p.grad = piece
        else:
            p.grad = previous.add_(piece)


def _blocks(shared: Sequence[Tensor]) -> list[slice]:
    """Each parameter's column slice of the gradient matrix."""
    out, start = [], 0
    for size in grad_ops.flat_sizes(shared):
        out.append(slice(start, start + size))
        start += size
    return out


class _LastPass:
    """Hooks of the last pass: keep each gradient and add its Gramian terms while it is hot."""

    def __init__(self, shared: Sequence[Tensor], head: Tensor, blocks: list[slice]) -> None:
        rows, dtype, device = head.shape[0], head.dtype, head.device
        self._head, self._blocks = head, blocks
        self.head_gram = torch.zeros(rows, rows, dtype=dtype, device=device)
        self.cross = torch.zeros(rows, dtype=dtype, device=device)
        self.square = torch.zeros(1, dtype=dtype, device=device)
        self.grads: list[Tensor | None] = [None] * len(shared)
        self._handles = [
            p.register_post_accumulate_grad_hook(self._hook(i)) for i, p in enumerate(shared)
        ]

    def _hook(self, index: int):  # type: ignore[no-untyped-def]
        def hook(param: Tensor) -> None:
            grad = param.grad
            param.grad = None
            if grad is None:
                return
            flat = grad.reshape(-1) if grad.is_contiguous() else grad.contiguous().view(-1)
            self._add_terms(self._head[:, self._blocks[index]], flat)
            self.grads[index] = flat

        return hook

    def _add_terms(self, rows: Tensor, flat: Tensor) -> None:
        """Add ``R R^T``, ``R g`` and ``g . g`` of one parameter's block.

        On CPU with several stored rows the block is walked in column chunks so that ``R`` is
        read from memory once for both products (at ``T=8`` reading it twice made this path
        slower than storing the last row too).
        """
        size = flat.shape[0]
        chunk = grad_ops.GRAMIAN_CHUNK
        if rows.device.type != "cpu" or rows.shape[0] < 2 or size <= 2 * chunk:
            self.head_gram.addmm_(rows, rows.T)
            self.cross.addmv_(rows, flat)
        else:
            for start in range(0, size, chunk):
                part = rows[:, start:start + chunk]
                self.head_gram.addmm_(part, part.T)
                self.cross.addmv_(part, flat[start:start + chunk])
        self.square.addmv_(flat.view(1, -1), flat)

    def remove(self) -> None:
        """Unregister the hooks."""
        for handle in self._handles:
            handle.remove()

    def gramian(self) -> Tensor:
        """The ``(T, T)`` Gramian (blocks the last task did not reach added here)."""
        for index, grad in enumerate(self.grads):
            if grad is None:
                grad_ops.add_gramian_(self.head_gram, self._head[:, self._blocks[index]])
        rows = self.head_gram.shape[0]
        gram = torch.empty(rows + 1, rows + 1, dtype=self.cross.dtype, device=self.cross.device)
        gram[:rows, :rows] = self.head_gram
        gram[:rows, rows] = self.cross
        gram[rows, :rows] = self.cross
        gram[rows, rows] = self.square[0]
        return gram


def _combine_in_place(
    shared: Sequence[Tensor],
    head: Tensor,
    blocks: list[slice],
    grads: list[Tensor | None],
    weights: np.ndarray,
) -> list[Tensor]:
    """Per parameter, ``w_T g + R^T w_head``, over ``g`` where the last task reached it."""
    w_head = torch.as_tensor(np.asarray(weights[:-1]), dtype=head.dtype)
    w_head = w_head.to(head.device, non_blocking=True)
    w_last = float(weights[-1])
    out = []
    for p, block, grad in zip(shared, blocks, grads):
        rows = head[:, block]
        if grad is None:
            piece = torch.mv(rows.T, w_head)
        else:
            piece = grad.addmv_(rows.T, w_head, beta=w_last)
        out.append(piece.view_as(p))
    return out
