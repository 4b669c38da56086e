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

Multi-task training: an ``mtl`` section replaces the single-task RecurrentTracker +
ReferenceTrainer by an :class:`~dwi_mtl.models.mtl_tracker.MTLTracker` (architecture built
*by name* through :func:`dwi_mtl.mtl.architectures.get_architecture`) trained by
:class:`~dwi_mtl.models.model_trainer.ModelTrainer` on its dict of per-task losses::

    mtl:
      architecture: mmoe                  # a key of dwi_mtl.mtl.architectures.ARCHITECTURES
      architecture_args: {num_experts: 3}
      encoder: {hidden_size: 32, nb_conv_layers: 1, nb_gru_layers: 1}  # CausalSequenceEncoder
      tasks: [direction, eos, {type: classification, name: bundle, key: bundle, nb_classes: 3}]
      head_hidden_size: 32   # optional; also gate, multi_input, entropy_regularization
    trainer: {weighting: upgrad, weighting_kwargs: {}}   # a key of dwi_mtl.mtl.weighting

The ``model`` section must then be empty; ``trainer.task_names`` defaults to the tasks' names,
``batch_loader.data_per_streamline_keys`` gets the keys the tasks read, and
``trainer.weighting_kwargs.rep_grad: true`` builds the architecture with ``rep_grad``. Without
an ``mtl`` section nothing changes. Every bad name or argument is one ``ConfigError`` naming
the section and key, raised before the experiment folder is created.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from dwi_mtl.errors import ConfigError, DwiMtlError
from dwi_mtl.state import derive_seed

SECTIONS = ("dataset", "batch_sampler", "batch_loader", "model", "trainer")
#: Sections that change what is built when present (absent: the single-task run).
OPTIONAL_SECTIONS = ("mtl",)
TOP_LEVEL = ("hdf5_file", "seed", *SECTIONS, *OPTIONAL_SECTIONS)
#: Keys of the ``mtl`` section (the arguments of MTLTracker that the config chooses).
MTL_KEYS = ("architecture", "architecture_args", "encoder", "tasks", "head_hidden_size",
            "gate", "multi_input", "entropy_regularization")

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
    if "mtl" in config:
        _check_mtl_section(config["mtl"], where)


def _check_mtl_section(section: Any, where: str) -> None:
    """The ``mtl`` section: a mapping of known keys with ``architecture`` and ``tasks``."""
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: section 'mtl' must be a mapping")
    unknown = sorted(set(section) - set(MTL_KEYS))
    if unknown:
        raise ConfigError(f"{where}: config section 'mtl': unknown keys {unknown}; expected "
                          f"some of {list(MTL_KEYS)}")
    for key in ("architecture", "tasks"):
        if key not in section:
            raise ConfigError(f"{where}: config section 'mtl' needs '{key}'")


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
        elif section in OPTIONAL_SECTIONS:
            config.setdefault(section, {})[name] = value
        elif section not in SECTIONS:
            raise ConfigError(f"override {item!r}: unknown section {section!r}; use "
                              f"{SECTIONS + OPTIONAL_SECTIONS}")
        else:
            config[section][name] = value
    return config


def build_objects(config: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    """Build ``(dataset, sampler, loader, model)`` from a checked configuration.

    The model is a RecurrentTracker, or an MTLTracker when the config has an ``mtl`` section.

    Raises:
        ConfigError: naming the section whose arguments the constructor rejects.
    """
    from dwi_mtl.data import MultiSubjectDataset
    from dwi_mtl.training.batch_loader import BatchLoader
    from dwi_mtl.training.batch_sampler import BatchSampler

    if not config.get("hdf5_file"):
        raise ConfigError("the config needs 'hdf5_file' (or --hdf5_file)")
    mtl = config.get("mtl")
    if mtl is not None:
        _check_mtl_section(mtl, "config")
        if config["model"]:
            raise ConfigError(
                "config section 'model' configures the single-task RecurrentTracker; with an "
                "'mtl' section set the encoder in mtl.encoder (got model keys "
                f"{sorted(config['model'])})")
    seed = _checked_seed(config.get("seed", DEFAULT_SEED))
    dataset = _call("dataset", MultiSubjectDataset, config["dataset"], config["hdf5_file"])
    sampler_args = dict(config["batch_sampler"])
    sampler_args.setdefault(
        "streamline_group", _default_group(dataset.streamline_groups, "streamline")
    )
    sampler = _call("batch_sampler", BatchSampler, sampler_args, dataset)
    loader_args = dict(config["batch_loader"])
    loader_args.setdefault("streamline_group", sampler_args["streamline_group"])
    loader_args.setdefault("input_group", _default_group(dataset.volume_groups, "volume"))
    if mtl is not None:
        loader_args["data_per_streamline_keys"] = _with_task_keys(
            loader_args.get("data_per_streamline_keys", ()), mtl["tasks"])
    try:
        loader = _call("batch_loader", BatchLoader, loader_args, dataset)
    except DwiMtlError as exc:
        if mtl is None or "data_per_streamline" not in str(exc):
            raise
        raise ConfigError(f"config section 'mtl', key 'tasks': the tasks read "
                          f"data_per_streamline {loader_args['data_per_streamline_keys']}: "
                          f"{exc}") from exc
    nb_features = dataset.nb_features[loader_args["input_group"]] * len(loader.offsets)
    torch.manual_seed(derive_seed(seed, "model_init"))
    if mtl is None:
        return dataset, sampler, loader, _build_recurrent(config["model"], nb_features)
    return dataset, sampler, loader, _build_mtl(mtl, config["trainer"], nb_features)


def trainer_arguments(config: dict[str, Any], model: Any) -> tuple[type, dict[str, Any]]:
    """The trainer class and its keyword arguments for the model :func:`build_objects` built.

    Single task: ``ReferenceTrainer`` with the ``trainer`` section. Multi-task: ``ModelTrainer``
    with ``task_names`` defaulting to the model's tasks and the ``weighting`` checked now (a
    throw-away instance), so a bad name or argument fails before the experiment folder exists.

    Raises:
        ConfigError: naming ``trainer.task_names``, ``trainer.weighting`` or
            ``trainer.weighting_kwargs``.
    """
    from dwi_mtl.models.model_trainer import ModelTrainer
    from dwi_mtl.training.reference_trainer import ReferenceTrainer

    options = dict(config["trainer"])
    if config.get("mtl") is None:
        return ReferenceTrainer, options
    tasks = list(model.task_names)
    given = options.setdefault("task_names", tasks)
    if given != tasks:
        raise ConfigError(f"config section 'trainer', key 'task_names': {given!r} must be the "
                          f"mtl tasks' names {tasks} (or be left out)")
    weighting = options.get("weighting")
    if weighting is not None:
        _check_weighting(weighting, options.get("weighting_kwargs"), tasks)
        _refuse_distributed_rep_grad(options.get("weighting_kwargs"))
    elif options.get("weighting_kwargs"):
        raise ConfigError("config section 'trainer', key 'weighting_kwargs' is set but "
                          "'weighting' is not: name a weighting (e.g. upgrad)")
    return ModelTrainer, options


def _build_recurrent(args: dict[str, Any], nb_features: int) -> Any:
    from dwi_mtl.models.recurrent_tracker import RecurrentTracker

    return _call("model", RecurrentTracker, {"nb_features": nb_features, **args})


def _build_mtl(mtl: dict[str, Any], trainer: dict[str, Any], nb_features: int) -> Any:
    """The MTLTracker of the ``mtl`` section (``rep_grad`` from the weighting's arguments)."""
    from dwi_mtl.models.mtl_tracker import MTLTracker

    weighting_kwargs = trainer.get("weighting_kwargs") or {}
    if not isinstance(weighting_kwargs, dict):
        raise ConfigError("config section 'trainer', key 'weighting_kwargs' must be a mapping, "
                          f"got {weighting_kwargs!r}")
    rep_grad = weighting_kwargs.get("rep_grad", False)
    try:
        return MTLTracker(nb_features, rep_grad=rep_grad, **mtl)
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"config section 'mtl': {exc}") from exc


def _with_task_keys(keys: Any, tasks: Any) -> list[str]:
    """The loader's ``data_per_streamline_keys`` plus the ones the tasks read."""
    from dwi_mtl.models.mtl_tracker import build_tasks

    if isinstance(keys, str) or not isinstance(keys, (list, tuple)):
        raise ConfigError("config section 'batch_loader', key 'data_per_streamline_keys' must "
                          f"be a list, got {keys!r}")
    try:
        needed = [k for task in build_tasks(tasks) for k in task.data_per_streamline_keys]
    except ConfigError as exc:
        raise ConfigError(f"config section 'mtl': {exc}") from exc
    return list(keys) + [k for k in dict.fromkeys(needed) if k not in keys]


def _check_weighting(name: Any, kwargs: Any, tasks: list[str]) -> None:
    from dwi_mtl.mtl.weighting import get_weighting

    try:
        get_weighting(name, tasks, **(kwargs or {}))
    except (ConfigError, TypeError, ValueError) as exc:
        raise ConfigError(f"config section 'trainer', key 'weighting' / 'weighting_kwargs': "
                          f"{exc}") from exc


def _refuse_distributed_rep_grad(kwargs: Any) -> None:
    """rep_grad under torch.distributed is refused by the weightings at the first step; refuse
    it here, before the experiment folder exists."""
    from dwi_mtl.training.distributed import DistributedContext

    if (kwargs or {}).get("rep_grad") and DistributedContext.current() is not None:
        raise ConfigError("config section 'trainer', key 'weighting_kwargs': rep_grad cannot run "
                          "under torch.distributed (the representation rows are per-sample); "
                          "set rep_grad: false")


def _checked_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"'seed' must be a non-negative integer, got {seed!r}")
    return seed


def _default_group(groups: Sequence[str], kind: str) -> str:
    if not groups:
        raise ConfigError(f"the dataset has no {kind} group")
    return groups[0]


def _call(section: str, factory: Any, kwargs: dict[str, Any], *args: Any) -> Any:
    try:
        return factory(*args, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"config section '{section}': {exc}") from exc
