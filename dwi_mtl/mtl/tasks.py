"""MTLTask: one named task of the MTLTrainer, with its heads, loss, metrics and data.

A task computes its prediction from the *shared blocks* (named modules such as an encoder and
a decoder, or an MTL architecture of :mod:`dwi_mtl.mtl.architectures`) and its own heads::

    outputs = forward(shared_blocks, heads, batch)     # default: blocks, then heads, in order
    loss = loss_fn(outputs, batch)
    {name: metric(outputs, batch) for name, metric in metrics.items()}

Its data is its own: a ``(BatchSampler, BatchLoader)`` pair (validation from the dataset's
validation subjects), a torch ``Dataset`` or ``DataLoader``, a list of batches, or any batch
source (:mod:`dwi_mtl.training.batch_sources`). Without validation data, a validation split is
drawn at random from the training data (samples of a dataset, batches of a list) with a
recorded seed derived from ``split_seed`` (tasks built on the same data with the same
``split_seed`` and fraction get the same split, as ``schedule="joint"`` needs).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from dwi_mtl.errors import ConfigError
from dwi_mtl.mtl.streamline_split import HeldOutSource, HoldOutLoader, draw_held_out
from dwi_mtl.mtl.task_sources import DatasetSource, to_device
from dwi_mtl.state import derive_generator
from dwi_mtl.training.batch_sources import MemoryBatchSource, SamplerLoaderSource

ForwardFn = Callable[[nn.ModuleDict, nn.ModuleDict, Any], Any]
LossFn = Callable[[Any, Any], torch.Tensor]
MetricFn = Callable[[Any, Any], Any]


def sequential_forward(blocks: nn.ModuleDict, heads: nn.ModuleDict, batch: Any) -> Any:
    """Default task forward: the batch's input (its first item) through every block, then
    every head, in order."""
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    for module in list(blocks.values()) + list(heads.values()):
        x = module(x)
    return x


class MTLTask:
    """A named task: heads, loss, metrics, and its own training and validation data.

    Args:
        name: the task's name (used in log names: ``validation_<name>_loss``); letters,
            digits, ``-`` and ``_``.
        heads: the task's head module, or ``{name: module}`` for several heads.
        loss: ``loss(outputs, batch) -> scalar tensor``.
        train_data: the training data (see the module docstring).
        valid_data: the validation data, same kinds; None draws a split from ``train_data``.
        forward: ``forward(shared_blocks, heads, batch) -> outputs``
            (default :func:`sequential_forward`).
        metrics: ``{name: metric(outputs, batch) -> float or tensor}`` computed in validation.
        batch_size: batch size when the data is a torch ``Dataset``.
        shuffle: shuffle a ``Dataset``'s training samples every epoch.
        seed: seed of the data order (``Dataset`` and list-of-batches data).
        validation_fraction: fraction of the training data held out when ``valid_data`` is
            None (at least one sample/batch on each side).
        split_seed: seed of that split (recorded in :attr:`split`).
        num_workers: DataLoader workers of a ``(BatchSampler, BatchLoader)`` pair.

    Raises:
        ConfigError: for a bad name, heads, callables, data or split that cannot be drawn.
    """

    def __init__(
        self,
        name: str,
        heads: nn.Module | Mapping[str, nn.Module],
        loss: LossFn,
        train_data: Any,
        valid_data: Any = None,
        *,
        forward: ForwardFn | None = None,
        metrics: Mapping[str, MetricFn] | None = None,
        batch_size: int = 32,
        shuffle: bool = True,
        seed: int = 1234,
        validation_fraction: float = 0.2,
        split_seed: int = 1234,
        num_workers: int = 0,
    ) -> None:
        self.name = _check_name(name)
        self.heads = _as_module_dict(heads, self.name)
        if not callable(loss):
            raise ConfigError(f"task {name!r}: loss must be callable, got {loss!r}")
        self.loss_fn = loss
        self.forward_fn: ForwardFn = forward or sequential_forward
        self.metrics = dict(metrics or {})
        self.batch_size, self.shuffle, self.seed = int(batch_size), shuffle, int(seed)
        self.num_workers = int(num_workers)
        if not 0.0 < float(validation_fraction) < 1.0:
            raise ConfigError(
                f"task {name!r}: validation_fraction must be in (0, 1), got {validation_fraction}"
            )
        self.split: dict[str, Any] = {}
        self.train_data = train_data
        self.valid_data = valid_data
        self.train_source, self.valid_source = self._build_sources(
            train_data, valid_data, float(validation_fraction), int(split_seed)
        )

    # ------------------------------------------------------------------ computation
    def forward(self, blocks: nn.ModuleDict, batch: Any, heads: nn.ModuleDict | None = None) -> Any:
        """The task's outputs on ``batch`` (with ``heads``, default the task's own)."""
        return self.forward_fn(blocks, self.heads if heads is None else heads, batch)

    def compute_loss(self, outputs: Any, batch: Any) -> torch.Tensor:
        """The scalar loss of ``outputs``.

        Raises:
            ConfigError: when the loss function does not return a one-element tensor.
        """
        loss = self.loss_fn(outputs, batch)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ConfigError(f"task {self.name!r}: loss must return a scalar tensor, got "
                              f"{type(loss).__name__}")
        return loss.reshape(())

    def compute_metrics(self, outputs: Any, batch: Any) -> dict[str, float]:
        """The task's metrics on ``outputs`` as floats."""
        return {name: float(fn(outputs, batch)) for name, fn in self.metrics.items()}

    # ------------------------------------------------------------------ data
    def _build_sources(
        self, train: Any, valid: Any, fraction: float, split_seed: int
    ) -> tuple[Any, Any]:
        if train is None:
            raise ConfigError(f"task {self.name!r}: train_data is required")
        if valid is None:
            return self._split(train, fraction, split_seed)
        if _is_pair(valid):
            valid = SamplerLoaderSource(valid[0], valid[1], "validation", self.num_workers)
        return self._as_source(train, True), self._as_source(valid, False)

    def _as_source(self, data: Any, training: bool) -> Any:
        if _is_pair(data):
            return SamplerLoaderSource(data[0], data[1], "training", self.num_workers)
        if hasattr(data, "begin") and hasattr(data, "state_dict"):
            return data
        if isinstance(data, torch.utils.data.DataLoader):
            dataset, options = self._loader_options(data, training)
            return DatasetSource(dataset, **options)
        if isinstance(data, torch.utils.data.Dataset):
            return DatasetSource(data, self.batch_size, self.shuffle and training, self.seed)
        if isinstance(data, Sequence):
            return MemoryBatchSource(data, self.seed, shuffle=self.shuffle and training)
        raise ConfigError(
            f"task {self.name!r}: data must be a (BatchSampler, BatchLoader) pair, a torch "
            f"Dataset or DataLoader, a list of batches or a batch source, got "
            f"{type(data).__name__}"
        )

    def _loader_options(self, loader: Any, training: bool) -> tuple[Any, dict[str, Any]]:
        """The dataset and DatasetSource options that replay a DataLoader from (seed, epoch).

        Raises:
            ConfigError: for a DataLoader with a custom sampler or batch_sampler (their order
                could not be replayed on resume).
        """
        samplers = (torch.utils.data.RandomSampler, torch.utils.data.SequentialSampler)
        if loader.batch_size is None or not isinstance(loader.sampler, samplers):
            raise ConfigError(
                f"task {self.name!r}: a DataLoader is replayed from (seed, epoch) for exact "
                "resume, which supports only batch_size with shuffle=True/False; pass its "
                "Dataset (or a batch source) instead of a custom sampler or batch_sampler"
            )
        shuffle = isinstance(loader.sampler, torch.utils.data.RandomSampler) and training
        return loader.dataset, {"batch_size": loader.batch_size, "shuffle": shuffle,
                                "seed": self.seed, "collate_fn": loader.collate_fn,
                                "drop_last": loader.drop_last}

    def _split(self, train: Any, fraction: float, split_seed: int) -> tuple[Any, Any]:
        """Hold out a random ``fraction`` of the training data as the validation set."""
        if _is_pair(train):
            return self._split_pair(train, fraction, split_seed)
        options: dict[str, Any] = {"batch_size": self.batch_size, "seed": self.seed}
        shuffle = self.shuffle
        if isinstance(train, torch.utils.data.DataLoader):
            train, options = self._loader_options(train, True)
            shuffle = options.pop("shuffle")
        if not isinstance(train, (torch.utils.data.Dataset, Sequence)) or not hasattr(
            train, "__len__"
        ):
            raise ConfigError(
                f"task {self.name!r}: cannot draw a validation split from "
                f"{type(train).__name__}; pass valid_data"
            )
        count = len(train)
        nb_valid = min(count - 1, max(1, round(fraction * count)))
        if count < 2:
            raise ConfigError(f"task {self.name!r}: {count} training item(s), cannot split")
        perm = derive_generator(split_seed, "validation_split").permutation(count)
        valid_ids = sorted(int(i) for i in perm[:nb_valid])
        train_ids = sorted(int(i) for i in perm[nb_valid:])
        self.split = {"kind": "random", "seed": split_seed, "fraction": fraction,
                      "nb_training": len(train_ids), "nb_validation": len(valid_ids)}
        if isinstance(train, torch.utils.data.Dataset):
            return (DatasetSource(train, shuffle=shuffle, indices=train_ids, **options),
                    DatasetSource(train, shuffle=False, indices=valid_ids, **options))
        return (MemoryBatchSource([train[i] for i in train_ids], self.seed, self.shuffle),
                MemoryBatchSource([train[i] for i in valid_ids], self.seed, False))

    def _split_pair(self, pair: tuple[Any, Any], fraction: float, seed: int) -> tuple[Any, Any]:
        """Validation subjects of the dataset, else random held-out training streamlines."""
        sampler, loader = pair
        dataset = sampler.dataset
        if len(dataset.validation) > 0:
            self.split = {"kind": "validation subjects of the dataset"}
            return (self._as_source(pair, True),
                    SamplerLoaderSource(sampler, loader, "validation", self.num_workers))
        group = sampler.streamline_group
        held = draw_held_out(dataset.training, group, fraction, seed)
        nb_valid = int(sum(int(m.sum()) for m in held))
        nb_total = int(sum(len(m) for m in held))
        if nb_valid == 0 or nb_valid == nb_total:
            raise ConfigError(f"task {self.name!r}: validation_fraction {fraction} of "
                              f"{nb_total} streamlines leaves an empty split; pass valid_data")
        self.split = {"kind": "random streamlines", "seed": seed, "fraction": fraction,
                      "nb_training": nb_total - nb_valid, "nb_validation": nb_valid}
        size = sampler.budgets["validation"] if sampler.batch_size_units == "nb_streamlines" \
            else self.batch_size
        return (SamplerLoaderSource(sampler, HoldOutLoader(loader, held), "training",
                                    self.num_workers),
                HeldOutSource(loader, held, int(size)))

    def prepare_batch(self, batch: Any, device: torch.device) -> Any:
        """Move a batch to ``device`` (through the BatchLoader when it interpolates there)."""
        loader = self.train_data[1] if _is_pair(self.train_data) else None
        if loader is not None and getattr(batch, "needs_interpolation", False):
            return loader.to_device(batch, device)
        return to_device(batch, device)

    def get_config(self) -> dict[str, Any]:
        """What ``parameters.json`` records about the task (its split seed included)."""
        return {
            "name": self.name,
            "heads": {k: type(v).__name__ for k, v in self.heads.items()},
            "metrics": sorted(self.metrics),
            "split": dict(self.split),
            "train_source": type(self.train_source).__name__,
            "valid_source": type(self.valid_source).__name__,
        }


def same_data(first: Any, second: Any) -> bool:
    """Whether two tasks' data arguments are the same data: the same object, or
    ``(BatchSampler, BatchLoader)`` pairs made of the same sampler and loader."""
    if first is second:
        return True
    return (_is_pair(first) and _is_pair(second) and first[0] is second[0]
            and first[1] is second[1])


def _is_pair(data: Any) -> bool:
    return (isinstance(data, tuple) and len(data) == 2 and hasattr(data[0], "set_context")
            and hasattr(data[1], "load_batch"))


def _check_name(name: str) -> str:
    text = str(name)
    if not text or not all(c.isalnum() or c in "-_" for c in text):
        raise ConfigError(f"task name must be letters, digits, '-' or '_', got {name!r}")
    return text


def _as_module_dict(heads: nn.Module | Mapping[str, nn.Module], name: str) -> nn.ModuleDict:
    if isinstance(heads, nn.ModuleDict):
        return heads
    if isinstance(heads, nn.Module):
        return nn.ModuleDict({"head": heads})
    if isinstance(heads, Mapping) and all(isinstance(m, nn.Module) for m in heads.values()):
        return nn.ModuleDict(dict(heads))
    raise ConfigError(f"task {name!r}: heads must be an nn.Module or a dict of them")
