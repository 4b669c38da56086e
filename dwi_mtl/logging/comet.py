"""Comet.ml logging: online, offline (an archive in ``<experiment>/comet/``) or disabled.

``comet_ml`` is imported only when a sink is created in online or offline mode. Offline mode
never touches the network: the environment variables that make comet_ml probe it (environment
details, error tracking, auto-logging) are switched off before the import and the experiment is
created with ``log_env_details=False`` and friends.

Resume: the experiment key is part of the checkpoint. Online, the resumed run reopens the same
experiment (``comet_ml.ExistingExperiment``). Offline, the resumed run opens an
``ExistingOfflineExperiment`` with the same key, which writes a *new* zip archive into
``<experiment>/comet/``; uploading all archives of the folder in the order they were written
(``comet upload <experiment>/comet/*.zip``) appends them to one experiment on the server. Points
logged after the last checkpoint by a run that crashed are logged again by the resumed run
at the same steps (Comet keeps both; the .npy logs are the exact record).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from dwi_mtl.errors import ConfigError
from dwi_mtl.logging.sinks import LogSink
from dwi_mtl.training.faults import fault_point

logger = logging.getLogger(__name__)

COMET_MODES = ("online", "offline", "disabled")

#: Settings that keep comet_ml from probing the network (see anchors.md).
_OFFLINE_ENVIRONMENT = {
    "COMET_AUTO_LOG_ENV_DETAILS": "false",
    "COMET_ERROR_TRACKING_ENABLE": "false",
    "COMET_DISABLE_AUTO_LOGGING": "1",
}
_QUIET_KWARGS = {
    "log_code": False,
    "log_graph": False,
    "auto_param_logging": False,
    "auto_metric_logging": False,
    "parse_args": False,
    "auto_output_logging": False,
    "log_env_details": False,
    "log_git_metadata": False,
    "log_git_patch": False,
    "log_env_gpu": False,
    "log_env_host": False,
    "log_env_cpu": False,
    "display_summary_level": 0,
}


class CometSink(LogSink):
    """Log parameters, per-batch and per-epoch metrics to Comet.ml.

    Args:
        mode: ``"online"``, ``"offline"`` or ``"disabled"`` (the sink then does nothing).
        offline_directory: where offline archives are written (``<experiment>/comet``).
        workspace: Comet workspace (online).
        project_name: Comet project.
        experiment_name: the name shown in Comet (the experiment folder's name).
        log_every_n_batches: one batch point every N training batches.
    """

    def __init__(
        self,
        mode: str = "disabled",
        offline_directory: str | Path | None = None,
        workspace: str | None = None,
        project_name: str | None = None,
        experiment_name: str | None = None,
        log_every_n_batches: int = 1,
    ) -> None:
        if mode not in COMET_MODES:
            raise ConfigError(f"comet mode must be one of {COMET_MODES}, got {mode!r}")
        if mode == "offline" and offline_directory is None:
            raise ConfigError("comet offline mode needs an offline_directory")
        self.mode = mode
        self.offline_directory = Path(offline_directory) if offline_directory else None
        self.workspace = workspace
        self.project_name = project_name
        self.experiment_name = experiment_name
        self.log_every_n_batches = max(1, int(log_every_n_batches))
        self.experiment_key: str | None = None
        self._experiment: Any = None

    @property
    def enabled(self) -> bool:
        """Whether anything is logged at all."""
        return self.mode != "disabled"

    def _get_experiment(self) -> Any:
        if self._experiment is None and self.enabled:
            self._experiment = self._create_experiment()
            self.experiment_key = self._experiment.get_key()
        return self._experiment

    def _create_experiment(self) -> Any:
        for name, value in _OFFLINE_ENVIRONMENT.items():
            os.environ.setdefault(name, value)
        import comet_ml

        experiment: Any
        kwargs: dict[str, Any] = dict(_QUIET_KWARGS)
        kwargs.update(workspace=self.workspace, project_name=self.project_name)
        if self.mode == "offline":
            assert self.offline_directory is not None
            self.offline_directory.mkdir(parents=True, exist_ok=True)
            kwargs["offline_directory"] = str(self.offline_directory)
            if self.experiment_key is None:
                experiment = comet_ml.OfflineExperiment(**kwargs)
            else:
                kwargs.pop("display_summary_level")
                experiment = comet_ml.ExistingOfflineExperiment(
                    previous_experiment=self.experiment_key, **kwargs
                )
        elif self.experiment_key is None:
            experiment = comet_ml.Experiment(**kwargs)
        else:
            experiment = comet_ml.ExistingExperiment(
                previous_experiment=self.experiment_key, **kwargs
            )
        if self.experiment_name:
            experiment.set_name(self.experiment_name)
        logger.info("Comet %s experiment %s", self.mode, experiment.get_key())
        return experiment

    def start(self) -> None:
        """Create (or reopen) the Comet experiment now, so its key is known for checkpoints."""
        self._get_experiment()

    def log_parameters(self, parameters: dict[str, Any]) -> None:
        experiment = self._get_experiment()
        if experiment is not None:
            experiment.log_parameters(parameters)

    def log_batch(self, phase: str, step: int, metrics: dict[str, float]) -> None:
        if phase != "training" or step % self.log_every_n_batches:
            return
        experiment = self._get_experiment()
        if experiment is not None:
            experiment.log_metrics(metrics, prefix="batch", step=step)

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        experiment = self._get_experiment()
        if experiment is not None:
            experiment.log_metrics(metrics, epoch=epoch, step=epoch)

    def close(self) -> None:
        if self._experiment is not None:
            fault_point("comet.ending")
            self._experiment.end()
            self._experiment = None

    def state_dict(self) -> dict[str, Any]:
        return {"experiment_key": self.experiment_key}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.experiment_key = state.get("experiment_key")
