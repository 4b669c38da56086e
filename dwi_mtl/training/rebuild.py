"""Rebuild a trainer and everything it uses from an experiment folder, then restore its state.

``parameters.json`` records, for the dataset, batch sampler, batch loader, model and trainer,
the class import path and the constructor arguments (``get_config()``). Rebuilding imports
each class and calls it with those arguments (the dataset first, since sampler and loader take
it), applies the caller's overrides, and loads the latest complete checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from dwi_mtl.errors import CheckpointError
from dwi_mtl.state import import_class
from dwi_mtl.training.distributed import shard_config
from dwi_mtl.training.experiment import ExperimentFolder, rebuild

logger = logging.getLogger(__name__)

#: Overrides that replace a built object or the dataset path instead of a trainer option.
_OBJECT_OVERRIDES = ("hdf5_file", "model", "dataset", "batch_sampler", "batch_loader")


def rebuild_trainer(experiments_path: str | Path, experiment_name: str, **overrides: Any) -> Any:
    """Rebuild the experiment's trainer and load its latest checkpoint.

    Args:
        experiments_path: parent folder of the experiment.
        experiment_name: the experiment's folder.
        **overrides: ``hdf5_file``; built ``model`` / ``dataset`` / ``batch_sampler`` /
            ``batch_loader``; any trainer option (``max_epochs``, ``patience``, ...).

    Raises:
        CheckpointError: when the folder, its parameters or its checkpoint are missing or
            unusable (naming the file), or a class cannot be imported.
    """
    experiment = ExperimentFolder(experiments_path, experiment_name)
    params = experiment.read_parameters()
    if isinstance(params.get("batch_sampler", {}).get("config"), dict):  # resume on any ranks
        params["batch_sampler"]["config"].update(shard_config())
    objects = {key: overrides.pop(key) for key in _OBJECT_OVERRIDES if key in overrides}
    try:
        dataset = objects.get("dataset") or _rebuild_dataset(params, objects.get("hdf5_file"))
        sampler = objects.get("batch_sampler") or rebuild(params["batch_sampler"], dataset)
        loader = objects.get("batch_loader") or rebuild(params["batch_loader"], dataset)
        model = objects.get("model") or _rebuild_model(params["model"])
        trainer_class = import_class(params["trainer"]["class"])
    except (ImportError, KeyError, TypeError) as exc:
        raise CheckpointError(f"cannot rebuild the experiment from '{experiment.parameters_file}': "
                              f"{exc!r}") from exc
    config = {**params["trainer"]["config"], **overrides, "from_checkpoint": True}
    trainer = trainer_class(model, experiments_path, experiment_name, sampler, loader, **config)
    if not trainer.load_checkpoint():
        raise CheckpointError(
            f"experiment '{experiment.path}' has no complete checkpoint: it stopped before its "
            "first checkpoint was written, so nothing was trained; remove the folder and start "
            "the run again")
    if (overrides or "hdf5_file" in objects) and trainer.is_main:  # for the next resume
        experiment.write_parameters(trainer.experiment_parameters())
    return trainer


def _rebuild_dataset(params: dict[str, Any], hdf5_file: str | None) -> Any:
    description = params["dataset"]
    if hdf5_file is not None:
        return rebuild(description, hdf5_file=str(hdf5_file))
    path = description["config"].get("hdf5_file")
    if path is not None and not Path(path).is_file():
        raise CheckpointError(
            f"the experiment's dataset '{path}' does not exist; pass --hdf5_file with its new path"
        )
    return rebuild(description)


def _rebuild_model(description: dict[str, Any] | None) -> Any:
    if description is None or description.get("config") is None:
        raise CheckpointError("the model has no recorded config: pass a built model= override")
    return rebuild(description)
