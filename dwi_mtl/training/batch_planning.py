"""Pure planning logic of :class:`~dwi_mtl.training.batch_sampler.BatchSampler`.

An epoch's batches are a deterministic function of the pool (streamline counts and budget
weights per subject), the sampler's settings, ``(seed, context, epoch)`` and the *cursor* where
the previous epoch stopped. The pool is visited in *passes*: each pass is one random
permutation of every streamline (per subject when ``nb_subjects_per_batch`` is set, over all
subjects otherwise), derived from ``(seed, context, pass)``. An epoch ends when its pass is
exhausted or when ``max_batches`` is reached; in the latter case the next epoch continues the
same pass, so every streamline is visited once before any is repeated. An epoch never crosses
two passes.

Nothing here keeps state between calls except :class:`PassCache` (permutations and cumulative
weights of recent passes, recomputable at will).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dwi_mtl.data.streamline_ops import points_after_resampling
from dwi_mtl.state import derive_generator

#: A planned global batch: ``[(subject_index, streamline ids)]``, subjects ascending.
PlannedBatch = list[tuple[int, np.ndarray]]


@dataclass
class Cursor:
    """Where the pool stands: the pass index and how far each queue of that pass was consumed.

    ``offsets`` has one entry per subject in per-subject mode, one entry (the global queue)
    otherwise.
    """

    pass_index: int
    offsets: list[int]

    def to_state(self) -> dict[str, Any]:
        """Return plain values for a state dict."""
        return {"pass_index": int(self.pass_index), "offsets": [int(o) for o in self.offsets]}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Cursor:
        """Rebuild a cursor saved by :meth:`to_state`."""
        return cls(int(state["pass_index"]), [int(o) for o in state["offsets"]])


@dataclass
class Pool:
    """The streamlines of one context: per-subject budget weights (one float per streamline)."""

    weights: list[np.ndarray]
    per_subject: bool
    starts: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        """Compute the start of each subject in the global (concatenated) index space."""
        counts = np.array([len(w) for w in self.weights], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    @property
    def counts(self) -> np.ndarray:
        """Streamlines per subject."""
        return np.diff(self.starts)

    def initial_cursor(self) -> Cursor:
        """Cursor at the start of pass 0."""
        return Cursor(0, [0] * (len(self.weights) if self.per_subject else 1))

    def queue_sizes(self) -> np.ndarray:
        """Length of each queue of a pass."""
        return self.counts if self.per_subject else np.array([self.starts[-1]], dtype=np.int64)


def build_pool(dataset: Any, subset: Any, group: str, units: str, step_size: float | None,
               nb_points: int | None, per_subject: bool) -> Pool:
    """Budget weight of every streamline of every subject of a subset (no point data read).

    Args:
        dataset: the ``MultiSubjectDataset`` (for the file's step size and compression).
        subset: its training or validation subset.
        group: the streamline group.
        units: ``"nb_streamlines"``, ``"nb_points"`` or ``"length_mm"``.
        step_size: the loader's resampling step; equal to the file's (uncompressed) one, the
            loader will not resample and the stored point counts are used as they are.
        nb_points: the loader's fixed number of points.
        per_subject: one queue per subject (``nb_subjects_per_batch`` set) or one in all.
    """
    file_step = getattr(dataset, "step_size", None)
    if (step_size is not None and file_step is not None and np.isclose(file_step, step_size)
            and getattr(dataset, "compress", None) is None):
        step_size = None
    weights = []
    for s in range(subset.nb_subjects):
        if units == "nb_streamlines":
            weights.append(np.ones(subset.nb_streamlines(s, group), dtype=np.float64))
        elif units == "length_mm":
            weights.append(np.asarray(subset.euclidean_lengths(s, group), dtype=np.float64))
        else:
            stored = subset.streamline_lengths(s, group)
            mm = subset.euclidean_lengths(s, group) if step_size else None
            pts = points_after_resampling(stored, mm, step_size, nb_points)
            weights.append(pts.astype(np.float64))
    return Pool(weights, per_subject=per_subject)


class PassCache:
    """Permutations and cumulative weights of the last few passes of one context."""

    def __init__(self, pool: Pool, seed: int, context: str, size: int = 2) -> None:
        """Keep up to ``size`` passes (the current one and the next suffice)."""
        self.pool = pool
        self.seed = seed
        self.context = context
        self.size = size
        self._cache: OrderedDict[int, tuple[list[np.ndarray], list[np.ndarray]]] = OrderedDict()

    def get(self, pass_index: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Return ``(permutations, cumulative weights)`` per queue for a pass."""
        if pass_index in self._cache:
            self._cache.move_to_end(pass_index)
            return self._cache[pass_index]
        perms: list[np.ndarray] = []
        cums: list[np.ndarray] = []
        if self.pool.per_subject:
            for subject, w in enumerate(self.pool.weights):
                rng = derive_generator(self.seed, self.context, "pass", pass_index, subject)
                perm = rng.permutation(len(w))
                perms.append(perm)
                cums.append(np.cumsum(w[perm]))
        else:
            all_w = np.concatenate(self.pool.weights) if self.pool.weights else np.zeros(0)
            perm = derive_generator(self.seed, self.context, "pass", pass_index).permutation(
                len(all_w)
            )
            perms.append(perm)
            cums.append(np.cumsum(all_w[perm]))
        self._cache[pass_index] = (perms, cums)
        while len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return perms, cums


def take(cum: np.ndarray, offset: int, budget: float, at_least_one: bool = True) -> int:
    """End index of the greedy prefix of a queue from ``offset`` whose weight fits ``budget``.

    With ``at_least_one`` (the first streamline of a batch), one streamline is taken even
    when it alone exceeds the budget, so planning always makes progress.
    """
    base = cum[offset - 1] if offset > 0 else 0.0
    end = int(np.searchsorted(cum, base + budget * (1 + 1e-12), side="right"))
    return min(max(end, offset + 1 if at_least_one else offset), len(cum))


def _fill_subjects(chosen: list[int], perms: list[np.ndarray], cums: list[np.ndarray],
                   offsets: np.ndarray, budget: float) -> PlannedBatch:
    """Share the budget between the chosen subjects; never exceed it (bar one streamline).

    Each subject gets the budget left divided by the subjects left, so what one subject
    cannot use goes to the next ones.
    """
    batch: PlannedBatch = []
    left = budget
    for j, s in enumerate(chosen):
        start = int(offsets[s])
        end = take(cums[s], start, left / (len(chosen) - j), at_least_one=not batch)
        if end > start:
            batch.append((s, perms[s][start:end].astype(np.int64)))
            left -= float(cums[s][end - 1] - (cums[s][start - 1] if start > 0 else 0.0))
            offsets[s] = end
    return batch


def plan_epoch(
    pool: Pool,
    cache: PassCache,
    cursor: Cursor,
    epoch: int,
    budget: float,
    nb_subjects: int | None,
    cycles: int,
    max_batches: int | None,
) -> tuple[list[PlannedBatch], Cursor]:
    """Plan the global batches of one epoch starting at ``cursor``.

    Returns:
        ``(batches, end_cursor)``; ``end_cursor`` is where the next epoch starts.
    """
    sizes = pool.queue_sizes()
    if int(sizes.sum()) == 0:
        return [], cursor
    offsets = np.array(cursor.offsets, dtype=np.int64)
    pass_index = cursor.pass_index
    if np.all(offsets >= sizes):  # previous pass exhausted: this epoch opens the next one
        pass_index, offsets = pass_index + 1, np.zeros_like(offsets)
    perms, cums = cache.get(pass_index)
    batches: list[PlannedBatch] = []
    chosen: list[int] = []
    while np.any(offsets < sizes) and (max_batches is None or len(batches) < max_batches):
        b = len(batches)
        if not pool.per_subject:
            end = take(cums[0], int(offsets[0]), budget)
            batches.append(_group_global(pool, perms[0][offsets[0] : end]))
            offsets[0] = end
            continue
        chosen = [s for s in chosen if offsets[s] < sizes[s]]
        if b % cycles == 0 or not chosen:
            chosen = _choose_subjects(
                cache, epoch, b, offsets, sizes, nb_subjects or len(sizes)
            )
        batches.append(_fill_subjects(sorted(chosen), perms, cums, offsets, budget))
    return batches, Cursor(pass_index, [int(o) for o in offsets])


def _choose_subjects(
    cache: PassCache, epoch: int, batch: int, offsets: np.ndarray, sizes: np.ndarray, k: int
) -> list[int]:
    """Draw up to ``k`` subjects with streamlines left, weighted by what they have left."""
    remaining = (sizes - offsets).clip(min=0)
    available = np.flatnonzero(remaining)
    k = min(k, len(available))
    rng = derive_generator(cache.seed, cache.context, "subjects", epoch, batch)
    probs = remaining[available] / remaining[available].sum()
    return [int(s) for s in rng.choice(available, size=k, replace=False, p=probs)]


def _group_global(pool: Pool, global_ids: np.ndarray) -> PlannedBatch:
    """Turn global indices into ``[(subject, ids)]`` with subjects ascending, order kept."""
    subjects = np.searchsorted(pool.starts, global_ids, side="right") - 1
    order = np.argsort(subjects, kind="stable")
    subjects, global_ids = subjects[order], global_ids[order]
    cuts = np.flatnonzero(np.diff(subjects)) + 1
    out: PlannedBatch = []
    for chunk_s, chunk_g in zip(np.split(subjects, cuts), np.split(global_ids, cuts)):
        s = int(chunk_s[0])
        out.append((s, (chunk_g - pool.starts[s]).astype(np.int64)))
    return out


def shard(batch: PlannedBatch, pool: Pool, rank: int, world_size: int) -> PlannedBatch:
    """Return this rank's part of a global batch: contiguous streamlines balanced by budget.

    Each streamline goes to the rank whose share of the cumulative budget holds its midpoint,
    so the split is deterministic, covers the batch exactly once across ranks, and keeps the
    subjects grouped.
    """
    if world_size == 1:
        return batch
    weights = [pool.weights[s][ids] for s, ids in batch]
    if not weights:
        return []
    w = np.concatenate(weights)
    total = float(w.sum())
    mid = np.cumsum(w) - w / 2
    owner = np.minimum((mid * world_size / max(total, 1e-300)).astype(np.int64), world_size - 1)
    out: PlannedBatch = []
    start = 0
    for (s, ids), ws in zip(batch, weights):
        mine = owner[start : start + len(ws)] == rank
        start += len(ws)
        if mine.any():
            out.append((s, ids[mine]))
    return out
