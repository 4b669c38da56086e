"""The training configuration file of ``dwi_mtl_train_model`` (JSON or YAML) and its overrides.

Sections (every one optional except ``hdf5_file``)::

    hdf5_file: dataset.hdf5
    seed: 1234                 # the model's initial weights (default 1234)
    dataset:       {lazy: false, cache_size: 1}                       # MultiSubjectDataset
    batch_sampler: {streamline_group: streamlines, batch_size_training: 100, seed: 1234}
    batch_loader:  {input_group: input, noise_gaussian_size: 0.1}     # BatchLoader
    model:         {hidden_size: 64, nb_layers: 1, dropout: 0.1}      # RecurrentTracker
    trainer:       {learning_rates: "0.001*3 0.0001", max_epochs: 20, patience: 5}

Keys are the constructors' arguments; ``batch_loader.streamline_group`` defaults to the
sampler's and ``model.nb_features`` is taken from the dataset's input group (times the
neighbourhood size). A CLI override ``--set trainer.max_epochs=3`` replaces one key (its
value is read as YAML: numbers, booleans, lists).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from dwi_mtl.errors import ConfigError
from dwi_mtl.state import derive_seed

SECTIONS = ("dataset", "batch_sampler", "batch_loader", "model", "trainer")
TOP_LEVEL = ("hdf5_file", "seed", *SECTIONS)

#: Seed of the model's initial weights when the config gives none: two fresh runs of one
#: config start from the same weights (torch seeds every process differently).
DEFAULT_SEED = 1234


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a JSON (``.json``) or YAML (anything else) configuration file.

    Raises:
        ConfigError: naming the file when it is missing, unparsable, not a mapping, or has
            unknown top-level keys or non-mapping sections.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        text = path.read_text(encoding="utf-8")
        config = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file '{path}' cannot be parsed: {exc}") from exc
    if not isinstance(config, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of sections")
    check_config(config, str(path))
    return config


def check_config(config: dict[str, Any], where: str) -> None:
    """Refuse unknown top-level keys and sections that are not mappings, naming ``where``."""
    unknown = sorted(set(config) - set(TOP_LEVEL))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; expected some of {list(TOP_LEVEL)}")
    for section in SECTIONS:
        if not isinstance(config.setdefault(section, {}) or {}, dict):
            raise ConfigError(f"{where}: section '{section}' must be a mapping")
        config[section] = config[section] or {}


def apply_overrides(config: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (``hdf5_file=path`` for the top level).

    Raises:
        ConfigError: naming the override when it is malformed or its section is unknown.
    """
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: bad value: {exc}") from exc
        section, dot, name = key.partition(".")
        if not dot:
            if key not in TOP_LEVEL or key in SECTIONS:
                raise ConfigError(f"override {item!r}: use section.key=value for {key!r}")
            config[key] = value
        elif section not in SECTIONS:
            raise ConfigError(f"override {item!r}: unknown section {section!r}; use {SECTIONS}")
        else:
            config[section][name] = value
    return config


def build_objects(config: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    """Build ``(dataset, sampler, loader, model)`` from a checked configuration.

    Raises:
        ConfigError: naming the section whose arguments the constructor rejects.
    """
    from dwi_mtl.data import MultiSubjectDataset
    from dwi_mtl.models.recurrent_tracker import RecurrentTracker
    from dwi_mtl.training.batch_loader import BatchLoader
    from dwi_mtl.training.batch_sampler import BatchSampler

    if not config.get("hdf5_file"):
        raise ConfigError("the config needs 'hdf5_file' (or --hdf5_file)")
    dataset = _call("dataset", MultiSubjectDataset, config["dataset"], config["hdf5_file"])
    sampler_args = dict(config["batch_sampler"])
    sampler_args.setdefault(
        "streamline_group", _default_group(dataset.streamline_groups, "streamline")
    )
    sampler = _call("batch_sampler", BatchSampler, sampler_args, dataset)
    loader_args = dict(config["batch_loader"])
    loader_args.setdefault("streamline_group", sampler_args["streamline_group"])
    loader_args.setdefault("input_group", _default_group(dataset.volume_groups, "volume"))
    loader = _call("batch_loader", BatchLoader, loader_args, dataset)
    model_args = dict(config["model"])
    model_args.setdefault(
        "nb_features", dataset.nb_features[loader_args["input_group"]] * len(loader.offsets)
    )
    seed = config.get("seed", DEFAULT_SEED)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"'seed' must be a non-negative integer, got {seed!r}")
    torch.manual_seed(derive_seed(seed, "model_init"))
    model = _call("model", RecurrentTracker, model_args)
    return dataset, sampler, loader, model


def _default_group(groups: Sequence[str], kind: str) -> str:
    if not groups:
        raise ConfigError(f"the dataset has no {kind} group")
    return groups[0]


def _call(section: str, factory: Any, kwargs: dict[str, Any], *args: Any) -> Any:
    try:
        return factory(*args, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"config section '{section}': {exc}") from exc
