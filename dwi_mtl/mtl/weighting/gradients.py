"""Per-task gradients, computed once per step and reused by every gradient-based weighting.

Three ways to get the ``(T, n)`` matrix of per-task gradients:

- :func:`loop_gradients` (parameter mode, default): ``T`` backward passes, each through one
  task's head and the shared part (``retain_graph`` for all but the last). The task-specific
  parameters accumulate their own task's gradient on the way, exactly as a plain backward would,
  so no graph walk is needed. This is the "floor" cost of a gradient method.
- :func:`batched_gradients` (parameter mode, ``grad_mode="vmap"``): one vmap-batched backward
  (``is_grads_batched=True``) over the stacked losses; the task-specific parameters are found by
  walking the autograd graph (:func:`graph_leaves`) and receive the sum over tasks.
- :func:`representation_gradients` (``rep_grad``): gradients at the shared representation,
  ``T`` cheap passes through the heads only (which also leave the heads their gradients);
  :func:`backward_through_representation` then sends the combined gradient once through the
  encoder, from the representation.

Nothing here calls ``.item()`` or moves data to the host.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def flat_sizes(tensors: Sequence[Tensor]) -> list[int]:
    """Return the number of elements of each tensor (the column blocks of a gradient matrix)."""
    return [t.numel() for t in tensors]


def graph_leaves(
    roots: Sequence[Tensor], exclude: Sequence[Tensor] = (), stop_at: Sequence[Tensor] = ()
) -> list[Tensor]:
    """Return the leaf tensors requiring grad that ``roots`` depend on, minus ``exclude``.

    Used to find the task-specific parameters when they are not given: every ``AccumulateGrad``
    node of the graph holds one such leaf.

    Args:
        roots: tensors whose autograd graphs are walked (per-task losses).
        exclude: leaves to leave out (the shared parameters).
        stop_at: tensors whose producing nodes are not walked through (the representation:
            what lies upstream of it is not collected, unless reached by another path).

    Returns:
        The leaves in discovery order, each once.
    """
    excluded = {id(t) for t in exclude}
    seen: set[int] = {id(t.grad_fn) for t in stop_at if t.grad_fn is not None}
    found: dict[int, Tensor] = {}
    stack = [r.grad_fn for r in roots if r.grad_fn is not None]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)
        if variable is not None and id(variable) not in excluded:
            found.setdefault(id(variable), variable)
        stack.extend(nxt for nxt, _ in node.next_functions if nxt is not None)
    return list(found.values())


def loop_gradients(
    losses: Sequence[Tensor], shared: Sequence[Tensor], out: Tensor | None = None
) -> Tensor:
    """Per-task gradients at ``shared`` with one backward pass per task.

    The shared parameters' pre-existing ``.grad`` (gradient accumulation) is set aside and put
    back untouched; the per-task gradients are read from ``.grad`` after each pass. Other leaves
    (task heads, learnable loss scales) keep what the passes accumulate into them: their own
    task's gradient.

    Args:
        losses: ``T`` scalar losses sharing one graph.
        shared: the shared tensors (leaves) to differentiate.
        out: optional ``(T, n)`` buffer to fill (reused across steps: no fresh allocation).

    Returns:
        A ``(T, n)`` matrix, ``n`` the total number of shared elements; zeros where a task does
        not reach a parameter.
    """
    saved = [p.grad for p in shared]
    for p in shared:
        p.grad = None
    matrix = out if out is not None else new_matrix(len(losses), shared)
    try:
        for t, loss in enumerate(losses):
            if not loss.requires_grad:  # e.g. a task absent from this batch: a zero row
                matrix[t].zero_()
                continue
            torch.autograd.backward(loss, retain_graph=t < len(losses) - 1)
            _move_grads_into(shared, split_like(matrix[t], shared))
    finally:
        for p, g in zip(shared, saved):
            p.grad = g
    return matrix


def _move_grads_into(shared: Sequence[Tensor], rows: list[Tensor]) -> None:
    """Copy each ``p.grad`` into its view of the matrix row (one fused copy), then drop it.

    A parameter the task does not reach gets zeros. ``torch._foreach_copy_`` does the copies in
    one dispatch (measured ~3% of a T=8 step faster than one ``copy_`` per parameter).
    """
    sources, targets = [], []
    for p, row in zip(shared, rows):
        if p.grad is None:
            row.zero_()
        else:
            sources.append(p.grad)
            targets.append(row)
        p.grad = None
    if targets:
        torch._foreach_copy_(targets, sources)


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
    for block in matrix.split(GRAMIAN_CHUNK, dim=1):
        out.addmm_(block, block.T)
    return out


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
        _accumulate(leaf, g.sum(dim=0))
    return torch.cat([g.reshape(len(losses), -1) for g in grads[:n_shared]], dim=1)


def representation_gradients(
    losses: Sequence[Tensor], reps: Sequence[Tensor]
) -> tuple[Tensor, list[Tensor]]:
    """Per-task gradients at the shared representation(s): ``T`` passes through the heads only.

    Each pass also takes the gradient of the task's other leaves (its head, a loss scale: every
    leaf reached from the loss without crossing ``reps``) and adds it to their ``.grad``, so
    :func:`backward_through_representation` only has to run the encoder, not the heads again.

    Args:
        losses: ``T`` scalar losses computed from ``reps``.
        reps: the encoder output(s) the task heads consume.

    Returns:
        A ``(T, r)`` matrix, ``r`` the total number of representation elements (zeros where a
        task does not reach a tensor), and the representation tensors some task reaches.
    """
    matrix = torch.empty(len(losses), sum(flat_sizes(reps)), dtype=reps[0].dtype,
                         device=reps[0].device)
    reached: dict[int, Tensor] = {}
    for t, loss in enumerate(losses):
        if not loss.requires_grad:  # a task absent from this batch: a zero row
            matrix[t].zero_()
            continue
        leaves = graph_leaves([loss], exclude=reps, stop_at=reps)
        grads = torch.autograd.grad(loss, list(reps) + leaves, retain_graph=True,
                                    allow_unused=True)
        for rep, piece, grad in zip(reps, split_like(matrix[t], reps), grads):
            if grad is None:
                piece.zero_()
            else:
                piece.copy_(grad)
                reached[id(rep)] = rep
        for leaf, grad in zip(leaves, grads[len(reps):]):
            if grad is not None:
                _accumulate(leaf, grad)
    return matrix, [r for r in reps if id(r) in reached]


def backward_through_representation(
    reps: Sequence[Tensor], combined: Tensor, all_reps: Sequence[Tensor] | None = None
) -> None:
    """Send the combined representation gradient once through the encoder.

    The heads already hold their gradients (:func:`representation_gradients`), so this is one
    backward pass from the representation tensors, each with its slice of ``combined``.

    Args:
        reps: the representation tensors some task reaches (their slices are backpropagated).
        combined: the flat combined representation gradient, ``(r,)``, laid out over
            ``all_reps`` (default: ``reps``).
        all_reps: every representation tensor, in the column order of ``combined``.
    """
    layout = list(reps if all_reps is None else all_reps)
    pieces = dict(zip((id(r) for r in layout), split_like(combined, layout)))
    if reps:
        torch.autograd.backward(list(reps), grad_tensors=[pieces[id(r)] for r in reps])


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
        _accumulate(p, piece if piece.dtype == p.dtype else piece.to(p.dtype))


def _accumulate(leaf: Tensor, grad: Tensor) -> None:
    """Add ``grad`` into ``leaf.grad`` (setting it when absent), as autograd would.

    A fresh ``grad`` (a view of this step's combined vector) is adopted without a copy; an
    existing ``.grad`` (gradient accumulation) is added to in place.
    """
    if leaf.grad is None:
        leaf.grad = grad.detach()
    else:
        leaf.grad.add_(grad.detach())
