"""Load a trained model from an experiment folder (``parameters.json`` + best model/checkpoint)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from dwi_mtl.errors import CheckpointError
from dwi_mtl.training.checkpoint import (
    CheckpointManager,
    read_state_folder,
    replace_folder_atomically,
)
from dwi_mtl.training.experiment import ExperimentFolder, describe, rebuild

logger = logging.getLogger(__name__)

WHICH = ("best", "checkpoint")


def load_trained_model(experiments_path: str | Path, experiment_name: str,
                       which: str = "best",
                       device: str | torch.device = "cpu") -> tuple[Any, dict[str, Any]]:
    """Rebuild the experiment's model from ``parameters.json`` and load its trained weights.

    Args:
        experiments_path: parent folder of the experiment.
        experiment_name: the experiment's folder.
        which: ``"best"`` (``best_model/``) or ``"checkpoint"`` (the latest checkpoint).
        device: where to put the model.

    Returns:
        ``(model in eval mode, parameters.json dict)`` (the dict also describes the batch
        loader, whose neighbourhood and input group tracking needs).

    Raises:
        CheckpointError: naming the folder/file when something is missing or unusable.
    """
    if which not in WHICH:
        raise CheckpointError(f"which must be one of {WHICH}, got {which!r}")
    experiment = ExperimentFolder(experiments_path, experiment_name)
    params = experiment.read_parameters()
    description = params.get("model")
    if not description or description.get("config") is None:
        raise CheckpointError(f"'{experiment.parameters_file}' does not describe a rebuildable "
                              "model")
    try:
        model = rebuild(description)
    except (ImportError, TypeError, ValueError) as exc:
        raise CheckpointError(f"cannot rebuild the model of '{experiment.parameters_file}': "
                              f"{exc}") from exc
    if which == "best":
        if not experiment.best_model.is_dir():
            raise CheckpointError(f"'{experiment.best_model}' does not exist: the experiment has "
                                  "no best model yet (use which='checkpoint')")
        state = read_state_folder(experiment.best_model)["model"]
    else:
        full, info = CheckpointManager(experiment.checkpoint).load_latest()
        logger.info("model weights from %s", info.path)
        state = full["objects"]["model"]
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"the weights of '{experiment.path}' do not fit its model: "
                              f"{exc}") from exc
    return model.to(device).eval(), params


def save_tracking_model(experiments_path: str | Path, experiment_name: str, model: Any,
                        loader: Any, epoch: int = -1) -> Path:
    """Write a folder :func:`load_trained_model` (and ``dwi_mtl_track_from_model``) can read.

    For models trained by a trainer whose ``parameters.json`` does not describe a single
    model (e.g. the MTLTrainer's shared blocks): ``parameters.json`` records the model, the
    batch loader (input group, neighbourhood) and its dataset, and ``best_model/`` the weights.

    Args:
        experiments_path: parent folder (must exist).
        experiment_name: the folder to create (replaced when it exists).
        model: a model with ``get_config()``.
        loader: the batch loader the model trained with (its dataset is recorded too).
        epoch: the epoch the weights come from (recorded).

    Returns:
        The folder's path.
    """
    experiment = ExperimentFolder(experiments_path, experiment_name)
    experiment.create(exist_ok=True)
    experiment.write_parameters({"model": describe(model), "batch_loader": describe(loader),
                                 "dataset": describe(getattr(loader, "dataset", None))})
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    replace_folder_atomically(experiment.best_model, {"epoch": int(epoch), "model": state}, {})
    return experiment.path
