"""Per-task gradients, computed once per step and reused by every gradient-based weighting.

Three ways to get the ``(T, n)`` matrix of per-task gradients:

- :func:`loop_gradients` (parameter mode, default): ``T`` backward passes, each through one
  task's head and the shared part (``retain_graph`` for all but the last). The task-specific
  parameters accumulate their own task's gradient on the way, exactly as a plain backward would,
  so no graph walk is needed; post-accumulate hooks move each shared gradient into the matrix
  while it is still in cache. The passes are the "floor" cost of a gradient method.
- :func:`batched_gradients` (parameter mode, ``grad_mode="vmap"``): one vmap-batched backward
  (``is_grads_batched=True``) over the stacked losses; the task-specific parameters are found by
  walking the autograd graph (:func:`graph_leaves`) and receive the sum over tasks.
- :func:`representation_gradients` (``rep_grad``): gradients at the shared representation,
  ``T`` cheap passes through the heads only; :func:`backward_through_representation` then
  sends the combined gradient through the encoder once. This is the fallback of
  :mod:`~dwi_mtl.mtl.weighting.rep_passes` (one pass through the heads for all tasks).

Nothing here calls ``.item()`` or moves data to the host.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dwi_mtl.errors import ConfigError


def flat_sizes(tensors: Sequence[Tensor]) -> list[int]:
    """Return the number of elements of each tensor (the column blocks of a gradient matrix)."""
    return [t.numel() for t in tensors]


def graph_leaves(roots: Sequence[Tensor], exclude: Sequence[Tensor] = ()) -> list[Tensor]:
    """Return the leaf tensors requiring grad that ``roots`` depend on, minus ``exclude``.

    Used to find the task-specific parameters when they are not given: every ``AccumulateGrad``
    node of the graph holds one such leaf.

    Args:
        roots: tensors whose autograd graphs are walked (per-task losses).
        exclude: leaves to leave out (the shared parameters).

    Returns:
        The leaves in discovery order, each once.
    """
    excluded = {id(t) for t in exclude}
    seen: dict[int, object] = {}  # keeps the node wrappers alive: their ids stay unique
    found: dict[int, Tensor] = {}
    stack = [r.grad_fn for r in roots if r.grad_fn is not None]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen[id(node)] = node
        variable = getattr(node, "variable", None)
        if variable is not None and id(variable) not in excluded:
            found.setdefault(id(variable), variable)
        stack.extend(nxt for nxt, _ in node.next_functions if nxt is not None)
    return list(found.values())


def loop_gradients(
    losses: Sequence[Tensor], shared: Sequence[Tensor], out: Tensor | None = None
) -> Tensor:
    """Per-task gradients at ``shared`` with one backward pass per task.

    Each shared parameter's gradient is copied into its block of the matrix row by a
    post-accumulate hook the moment autograd produces it, while it is still in cache, and then
    released, so one fresh gradient is alive at a time and the allocator hands the same memory
    to the next one. (In a whole training step this measured as fast as copying after each
    pass, within 0.5%; the hooks also serve :mod:`~dwi_mtl.mtl.weighting.gramian_passes`.)
    The shared parameters' pre-existing ``.grad`` (gradient accumulation) is set aside and put
    back untouched. Other leaves (task heads, learnable loss scales) keep what the passes
    accumulate into them: their own task's gradient.

    Args:
        losses: ``T`` scalar losses sharing one graph.
        shared: the shared tensors (leaves) to differentiate.
        out: optional ``(T, n)`` buffer to fill (reused across steps: no fresh allocation).

    Returns:
        A ``(T, n)`` matrix, ``n`` the total number of shared elements; zeros where a task does
        not reach a parameter.

    Raises:
        ConfigError: when a shared tensor is not a leaf (it has no ``.grad`` to read).
    """
    saved = set_aside_grads(shared)
    matrix = out if out is not None else new_matrix(len(losses), shared)
    try:
        fill_rows(losses, shared, matrix, retain_last=False)
    finally:
        for p, g in zip(shared, saved):
            p.grad = g
    return matrix


def set_aside_grads(shared: Sequence[Tensor]) -> list[Tensor | None]:
    """Check that the shared tensors are leaves; return their ``.grad`` and clear it.

    Raises:
        ConfigError: naming the first shared tensor that is not a leaf (no ``.grad`` to read).
    """
    for index, p in enumerate(shared):
        if not p.is_leaf:
            raise ConfigError(f"shared_params[{index}] is not a leaf tensor (a parameter)")
    saved = [p.grad for p in shared]
    for p in shared:
        p.grad = None
    return saved


def fill_rows(
    losses: Sequence[Tensor], shared: Sequence[Tensor], matrix: Tensor, retain_last: bool
) -> None:
    """One backward pass per loss, moving each shared gradient into its row of ``matrix``.

    The shared ``.grad`` must be cleared (:func:`set_aside_grads`); they are cleared again
    afterwards. ``retain_last`` keeps the graph after the last pass (more passes follow).
    """
    gather = _RowGather(shared)
    try:
        for t, loss in enumerate(losses):
            if not loss.requires_grad:  # e.g. a task absent from this batch: a zero row
                matrix[t].zero_()
                continue
            gather.start(split_like(matrix[t], shared))
            torch.autograd.backward(loss, retain_graph=retain_last or t < len(losses) - 1)
            gather.finish()
    finally:
        gather.remove()


class _RowGather:
    """Post-accumulate hooks that move each shared gradient into the current matrix row.

    Registered once for the ``T`` passes and removed afterwards, so the parameters carry no
    hook of ours outside :func:`loop_gradients`; hooks the user registered earlier run first
    and still see each task's gradient in ``.grad``.
    """

    def __init__(self, shared: Sequence[Tensor]) -> None:
        self._targets: list[Tensor] = []
        self._reached = [False] * len(shared)
        self._handles = [
            p.register_post_accumulate_grad_hook(self._hook(index))
            for index, p in enumerate(shared)
        ]

    def _hook(self, index: int):  # type: ignore[no-untyped-def]
        def hook(param: Tensor) -> None:
            if param.grad is not None:
                self._targets[index].copy_(param.grad)
                self._reached[index] = True
            param.grad = None  # freed now: its memory serves the next gradient while hot

        return hook

    def start(self, targets: list[Tensor]) -> None:
        """Direct the next pass's gradients into ``targets`` (views of one matrix row)."""
        self._targets = targets
        self._reached = [False] * len(targets)

    def finish(self) -> None:
        """Zero the blocks of the parameters the pass did not reach."""
        for target, reached in zip(self._targets, self._reached):
            if not reached:
                target.zero_()

    def remove(self) -> None:
        """Unregister the hooks."""
        for handle in self._handles:
            handle.remove()


#: Column block of the chunked CPU Gramian (fits the L2 cache for a few rows).
GRAMIAN_CHUNK = 32768


def gramian(matrix: Tensor) -> Tensor:
    """The ``T x T`` Gramian ``J J^T`` of a ``(T, n)`` gradient matrix, on its device.

    On CPU, for ``3 <= T <= 12`` rows, BLAS's ``(T, n) @ (n, T)`` kernel is memory bound and
    2-3x slower than accumulating ``addmm`` over column blocks of :data:`GRAMIAN_CHUNK` that
    stay in cache (measured: 2.9 ms against 1.3 ms at ``T=8``, ``n=0.66 M``, one thread); for
    other shapes and devices the single product is the fastest. The result differs from
    ``J @ J.T`` only by float rounding (summation order).

    Args:
        matrix: the ``(T, n)`` per-task gradients.

    Returns:
        The ``(T, T)`` Gramian, same dtype and device.
    """
    tasks, size = matrix.shape
    if matrix.device.type != "cpu" or not 3 <= tasks <= 12 or size <= 2 * GRAMIAN_CHUNK:
        return matrix @ matrix.T
    out = torch.zeros(tasks, tasks, dtype=matrix.dtype, device=matrix.device)
    add_gramian_(out, matrix)
    return out


def add_gramian_(out: Tensor, matrix: Tensor) -> Tensor:
    """Add ``matrix @ matrix.T`` into ``out`` in place, blocked as in :func:`gramian`.

    Args:
        out: the ``(T, T)`` accumulator.
        matrix: ``(T, m)`` rows, possibly a strided column block of a larger matrix.

    Returns:
        ``out``.
    """
    tasks, size = matrix.shape
    if matrix.device.type != "cpu" or not 3 <= tasks <= 12 or size <= 2 * GRAMIAN_CHUNK:
        return out.addmm_(matrix, matrix.T)
    for block in matrix.split(GRAMIAN_CHUNK, dim=1):
        out.addmm_(block, block.T)
    return out


#: Bytes of one column block of a blocked CPU pass over a ``(T, n)`` matrix (a few such blocks
#: stay in the L2 cache while several operations run on them).
BLOCK_BYTES = 1 << 20


def column_blocks(matrix: Tensor) -> list[slice]:
    """Column slices for a blocked pass over a ``(T, n)`` matrix: cache-sized blocks on CPU.

    Chaining several elementwise operations over whole ``(T, n)`` matrices reads and writes
    each intermediate from memory; applying the chain block by block keeps them in cache, so
    only the inputs and the state updates cost memory traffic. On other devices: one block.
    """
    tasks, size = matrix.shape
    if matrix.device.type != "cpu":
        return [slice(0, size)]
    width = max(4096, BLOCK_BYTES // (matrix.element_size() * max(tasks, 1)))
    return [slice(start, min(start + width, size)) for start in range(0, size, width)]


def new_matrix(tasks: int, shared: Sequence[Tensor]) -> Tensor:
    """An uninitialised ``(T, n)`` gradient matrix on the shared tensors' device and dtype."""
    ref = shared[0]
    return torch.empty(tasks, sum(flat_sizes(shared)), dtype=ref.dtype, device=ref.device)


def batched_gradients(losses: Sequence[Tensor], shared: Sequence[Tensor]) -> Tensor:
    """Per-task gradients at ``shared`` with one vmap-batched backward pass.

    The task-specific leaves found by :func:`graph_leaves` receive their own task's gradient
    (accumulated into ``.grad``) from the same pass.

    Args:
        losses: ``T`` scalar losses sharing one graph.
        shared: the shared tensors (leaves) to differentiate.

    Returns:
        A ``(T, n)`` matrix as :func:`loop_gradients`.
    """
    stacked = torch.stack(list(losses))
    others = graph_leaves(losses, exclude=shared)
    eye = torch.eye(len(losses), dtype=stacked.dtype, device=stacked.device)
    grads = torch.autograd.grad(
        stacked,
        list(shared) + others,
        grad_outputs=eye,
        is_grads_batched=True,
        allow_unused=True,
        materialize_grads=True,
    )
    n_shared = len(shared)
    for leaf, g in zip(others, grads[n_shared:]):
        accumulate(leaf, g.sum(dim=0))
    return torch.cat([g.reshape(len(losses), -1) for g in grads[:n_shared]], dim=1)


def representation_gradients(
    losses: Sequence[Tensor], reps: Sequence[Tensor], out: Tensor | None = None
) -> Tensor:
    """Per-task gradients at the shared representation(s): ``T`` passes through the heads only.

    Each task's gradient is copied into its row right after its pass, while still in cache,
    instead of stacking the ``T`` fresh tensors afterwards into a fresh matrix (measured 1-2.5%
    of a ``rep_grad`` step at T=2 and T=8, batch 256).

    Args:
        losses: ``T`` scalar losses computed from ``reps``.
        reps: the encoder output(s) the task heads consume.
        out: optional ``(T, r)`` buffer to fill (reused across steps).

    Returns:
        A ``(T, r)`` matrix, ``r`` the total number of representation elements.
    """
    matrix = out if out is not None else new_matrix(len(losses), reps)
    for t, loss in enumerate(losses):
        if not loss.requires_grad:  # a task absent from this batch: a zero row
            matrix[t].zero_()
            continue
        grads = torch.autograd.grad(
            loss, list(reps), retain_graph=True, allow_unused=True, materialize_grads=True
        )
        if len(reps) == 1:
            matrix[t].view_as(grads[0]).copy_(grads[0])
        else:
            torch._foreach_copy_(split_like(matrix[t], reps), list(grads))
    return matrix


def backward_through_representation(
    losses: Sequence[Tensor], reps: Sequence[Tensor], combined: Tensor
) -> None:
    """Backpropagate the losses, replacing the gradient reaching ``reps`` by ``combined``.

    One backward of the summed losses: the heads (and any other non-shared leaf) get their own
    task's gradient, while a hook on each representation swaps the incoming gradient for its
    slice of ``combined``, which then flows once through the encoder.

    Args:
        losses: the per-task losses.
        reps: the representation tensors.
        combined: the flat combined representation gradient, ``(r,)``.
    """
    pieces = split_like(combined, reps)
    handles = [r.register_hook(_constant_hook(piece)) for r, piece in zip(reps, pieces)]
    try:
        torch.autograd.backward(torch.stack(list(losses)).sum())
    finally:
        for handle in handles:
            handle.remove()


def split_like(flat: Tensor, tensors: Sequence[Tensor]) -> list[Tensor]:
    """Split a flat vector into views shaped like ``tensors``."""
    pieces = torch.split(flat, flat_sizes(tensors))
    return [piece.view_as(t) for piece, t in zip(pieces, tensors)]


def write_shared_gradient(shared: Sequence[Tensor], combined: Tensor) -> None:
    """Add the flat combined gradient into the shared parameters' ``.grad``.

    Args:
        shared: the shared parameters, in the column order of the gradient matrix.
        combined: the flat combined gradient, ``(n,)``.
    """
    for p, piece in zip(shared, split_like(combined, shared)):
        accumulate(p, piece if piece.dtype == p.dtype else piece.to(p.dtype))


def accumulate(leaf: Tensor, grad: Tensor) -> None:
    """Add ``grad`` into ``leaf.grad`` (setting it when absent), as autograd would.

    A fresh ``grad`` (a view of this step's combined vector) is adopted without a copy; an
    existing ``.grad`` (gradient accumulation) is added to in place.
    """
    if leaf.grad is None:
        leaf.grad = grad.detach()
    else:
        leaf.grad.add_(grad.detach())


def _constant_hook(value: Tensor):  # type: ignore[no-untyped-def]
    """Return a tensor hook that replaces the incoming gradient by ``value``."""

    def hook(_: Tensor) -> Tensor:
        return value

    return hook
