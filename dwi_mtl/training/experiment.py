"""The experiment folder: where a run keeps its parameters, checkpoints, best model and logs.

::

    <experiments_path>/<experiment_name>/
      parameters.json     class import paths + constructor arguments of every object
      checkpoint/         numbered atomic checkpoints (see dwi_mtl.training.checkpoint)
      best_model/         model state at the best epoch + best_epoch_losses.json
      logs/*.npy          histories
      tensorboard/        TensorBoard events (when enabled)
      comet/              Comet offline archives (offline mode)
      plots/              PNG curves (scripts)
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from dwi_mtl.errors import CheckpointError, ConfigError, ExperimentExistsError
from dwi_mtl.state import class_path, import_class

logger = logging.getLogger(__name__)

PARAMETERS_FILE = "parameters.json"


class ExperimentFolder:
    """Paths of one experiment and its ``parameters.json``.

    Args:
        experiments_path: parent folder (must exist).
        experiment_name: the run's folder name (a single path component).
    """

    def __init__(self, experiments_path: str | Path, experiment_name: str) -> None:
        name = str(experiment_name)
        if not name or Path(name).name != name or name in (".", ".."):
            raise ConfigError(f"experiment_name must be a plain folder name, got {name!r}")
        self.experiments_path = Path(experiments_path)
        self.name = name
        self.path = self.experiments_path / name

    checkpoint = property(lambda self: self.path / "checkpoint")
    best_model = property(lambda self: self.path / "best_model")
    logs = property(lambda self: self.path / "logs")
    tensorboard = property(lambda self: self.path / "tensorboard")
    comet = property(lambda self: self.path / "comet")
    plots = property(lambda self: self.path / "plots")
    parameters_file = property(lambda self: self.path / PARAMETERS_FILE)

    def create(self, exist_ok: bool = False) -> None:
        """Create the folder; refuse an existing experiment unless ``exist_ok``.

        Raises:
            ConfigError: when ``experiments_path`` does not exist.
            ExperimentExistsError: when the experiment exists and ``exist_ok`` is False.
        """
        if not self.experiments_path.is_dir():
            raise ConfigError(f"experiments_path '{self.experiments_path}' is not a folder")
        if self.path.exists() and not exist_ok:
            raise ExperimentExistsError(
                f"experiment '{self.path}' already exists; choose another experiment_name or "
                "resume it with resume_training_from_checkpoint"
            )
        self.path.mkdir(exist_ok=True)

    def create_with_parameters(self, parameters: dict[str, Any]) -> None:
        """Check that ``parameters`` serialize, then create the folder and write them, so a
        failure leaves no half-made experiment behind."""
        text = _to_json(parameters)
        self.create()
        self._write_text(text)

    def write_parameters(self, parameters: dict[str, Any]) -> None:
        """Write ``parameters.json`` atomically (temporary file, then rename)."""
        self._write_text(_to_json(parameters))

    def _write_text(self, text: str) -> None:
        tmp = self.path / f".{PARAMETERS_FILE}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.parameters_file)

    def read_parameters(self) -> dict[str, Any]:
        """Read ``parameters.json``.

        Raises:
            CheckpointError: naming the file when it is missing or not valid JSON.
        """
        if not self.parameters_file.is_file():
            raise CheckpointError(f"'{self.parameters_file}' not found: not an experiment folder")
        try:
            result: dict[str, Any] = json.loads(self.parameters_file.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise CheckpointError(f"'{self.parameters_file}' is not valid JSON: {exc}") from exc
        return result


def free_experiment_name(experiments_path: str | Path, name: str) -> str:
    """Return ``name``, or ``name_2``, ``name_3``... when an experiment of that name exists.

    For tools that start a fresh run without refusing an existing one (the demo), so a second
    call never overwrites the first experiment.
    """
    candidate, index = name, 1
    while (Path(experiments_path) / candidate).exists():
        index += 1
        candidate = f"{name}_{index}"
    return candidate


def _to_json(parameters: dict[str, Any]) -> str:
    try:
        return json.dumps(parameters, indent=2, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"the experiment parameters are not JSON-serializable: {exc}") from exc


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, type):
        return class_path(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


def describe(obj: Any) -> dict[str, Any] | None:
    """``{"class": import path, "config": obj.get_config()}`` for an object, None for None.

    An object without ``get_config()`` is recorded with ``"config": None`` (and a warning):
    it must then be passed as an override when the experiment is rebuilt.
    """
    if obj is None:
        return None
    if not hasattr(obj, "get_config"):
        logger.warning(
            "%s has no get_config(): resuming this experiment will need the built object "
            "passed as an override", class_path(obj),
        )
        return {"class": class_path(obj), "config": None}
    return {"class": class_path(obj), "config": obj.get_config()}


def rebuild(description: dict[str, Any] | None, *args: Any, **overrides: Any) -> Any:
    """Rebuild an object described by :func:`describe`: ``cls(*args, **config, **overrides)``.

    A class with a ``from_config(config)`` class method is built through it instead.
    """
    if description is None:
        return None
    cls = import_class(description["class"])
    config = {**description["config"], **overrides}
    if hasattr(cls, "from_config") and not args:
        return cls.from_config(config)
    return cls(*args, **config)
