"""Shared set-up of the distributed tests: a two-task trainer and the spawned rank workers.

Not a test module (no tests here); the ``test_ddp*`` name marks it as part of issue 10's tests.
Workers run under ``torch.multiprocessing.spawn`` with a gloo process group on a free
localhost port; they talk back through files written *outside* the experiment folder.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path
from typing import Any

import torch

from dwi_mtl.data import MultiSubjectDataset
from dwi_mtl.training.batch_loader import BatchLoader
from dwi_mtl.training.batch_sampler import BatchSampler
from dwi_mtl.training.distributed import init_from_environment, shutdown
from dwi_mtl.training.trainer import AbstractTrainer

TASKS = ["direction", "length"]
NB_FEATURES = 4
BATCH = 8  # streamlines: 4 per rank with 2 ranks
OPTIONS: dict[str, Any] = {
    "learning_rates": 0.05, "optimizer": "SGD", "weight_decay": 0.0, "task_names": TASKS,
    "max_batches_per_epoch_training": 4, "max_batches_per_epoch_validation": 3,
    "progress_bar": False, "device": "cpu", "checkpoint_durability": "none",
}


class TwoTaskNet(torch.nn.Module):
    """Shared layer on each streamline's mean input; a direction head and a length head."""

    def __init__(self, nb_features: int = NB_FEATURES, hidden: int = 8) -> None:
        super().__init__()
        self.nb_features, self.hidden = nb_features, hidden
        self.shared = torch.nn.Linear(nb_features, hidden)
        self.direction = torch.nn.Linear(hidden, 3)
        self.length = torch.nn.Linear(hidden, 1)

    def get_config(self) -> dict[str, int]:
        return {"nb_features": self.nb_features, "hidden": self.hidden}

    def get_share_params(self) -> list[torch.nn.Parameter]:
        return list(self.shared.parameters())

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = torch.tanh(self.shared(features))
        return {"direction": self.direction(hidden), "length": self.length(hidden)[:, 0]}


def _per_streamline_mean(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    index = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    sums = torch.zeros(len(lengths), values.shape[1]).index_add_(0, index, values)
    return sums / lengths[:, None].to(values.dtype)


class TwoTaskTrainer(AbstractTrainer):
    """Both losses average over streamlines (so the cross-rank weight is nb_streamlines)."""

    metric_weight_key = "nb_streamlines"

    def compute_batch_loss(self, batch: Any) -> dict[str, torch.Tensor]:
        features = _per_streamline_mean(batch.inputs, batch.lengths)
        target = _per_streamline_mean(batch.directions, batch.lengths - 1)
        out = self.model(features)
        return {
            "direction": (out["direction"] - target).pow(2).sum(1).mean(),
            "length": (out["length"] - batch.lengths.float() / 20).pow(2).mean(),
        }


class SignalledTrainer(TwoTaskTrainer):
    """Rank 1 sends itself SIGTERM after its second training batch."""

    def on_batch_end(self, phase: str, epoch: int, batch_index: int,
                     metrics: dict[str, float]) -> None:
        if self.distributed is not None and self.distributed.rank == 1 and batch_index == 1:
            os.kill(os.getpid(), signal.SIGTERM)


def make_trainer(hdf5: Path, experiments: Path, name: str, weighting: str | None = "ew",
                 rank: int = 0, world_size: int = 1, trainer_class: type = TwoTaskTrainer,
                 **options: Any) -> Any:
    dataset = MultiSubjectDataset(hdf5)
    sampler = BatchSampler(dataset, "streamlines", BATCH, seed=1, rank=rank,
                           world_size=world_size)
    loader = BatchLoader(dataset, "streamlines", input_group="input", seed=2,
                         noise_gaussian_size=0.1)
    # Each rank draws a different initialisation on purpose: the trainer must broadcast rank
    # 0's weights, so the run still equals one process seeded with 0.
    torch.manual_seed(rank)
    return trainer_class(TwoTaskNet(), experiments, name, sampler, loader,
                         weighting=weighting, **{**OPTIONS, **options})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn(scenario: str, tmp: Path, **kwargs: Any) -> None:
    """Run ``scenario`` on 2 spawned ranks (gloo); raises when a rank fails."""
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, free_port(), scenario, str(tmp), kwargs), nprocs=2, join=True)


def _worker(rank: int, world: int, port: int, scenario: str, tmp: str,
            kwargs: dict[str, Any]) -> None:
    # the variables srun sets (plus the master address a job script exports)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), SLURM_PROCID=str(rank),
                      SLURM_NTASKS=str(world), SLURM_LOCALID=str(rank))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        os.environ.pop(name, None)
    torch.set_num_threads(1)
    context = init_from_environment()
    assert context is not None and (context.rank, context.world_size) == (rank, world)
    assert context.backend == "gloo" or torch.cuda.is_available()
    try:
        SCENARIOS[scenario](rank, world, Path(tmp), **kwargs)
    except BaseException:
        shutdown(synchronize=False)
        raise
    shutdown()


def _forbid_writes_off_rank_0(rank: int) -> None:
    """Make every file writer of the engine fail on ranks other than 0."""
    if rank == 0:
        return
    from dwi_mtl.logging.npy_history import NpyHistory
    from dwi_mtl.training import checkpoint, loop, nonfinite
    from dwi_mtl.training.experiment import ExperimentFolder

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"rank {rank} wrote a file")

    checkpoint.CheckpointManager.save = refuse  # type: ignore[assignment,method-assign]
    checkpoint.replace_folder_atomically = refuse  # type: ignore[assignment]
    checkpoint.recover_replaced_folder = refuse  # type: ignore[assignment]
    nonfinite.NonFiniteGuard._write = refuse  # type: ignore[assignment,method-assign]
    NpyHistory.save = refuse  # type: ignore[assignment,method-assign]
    ExperimentFolder.create_with_parameters = refuse  # type: ignore[assignment,method-assign]
    ExperimentFolder.write_parameters = refuse  # type: ignore[assignment,method-assign]
    assert loop  # imported so the patched module attributes are the ones it uses


def _train(rank: int, world: int, tmp: Path, runs: list[dict[str, Any]]) -> None:
    """Train each run (fresh or resumed); save rank-tagged final weights next to it."""
    _forbid_writes_off_rank_0(rank)
    _check_engines_without_gradient_averaging_are_refused(tmp)
    for run in runs:
        if run.get("resume"):
            trainer = TwoTaskTrainer.init_from_checkpoint(tmp / "exp", run["name"],
                                                          max_epochs=run["max_epochs"])
        else:
            trainer = make_trainer(tmp / "data.hdf5", tmp / "exp", run["name"],
                                   run.get("weighting", "ew"), rank, world,
                                   max_epochs=run["max_epochs"], **run.get("options", {}))
        trainer.train_and_validate()
        torch.save(trainer.model.state_dict(), tmp / f"{run['name']}_rank{rank}.pt")


def _check_engines_without_gradient_averaging_are_refused(tmp: Path) -> None:
    from dwi_mtl.errors import ConfigError
    from dwi_mtl.training.batch_sources import MemoryBatchSource
    from dwi_mtl.training.experiment import ExperimentFolder
    from dwi_mtl.training.loop import TrainingEngine

    try:
        TrainingEngine(ExperimentFolder(tmp / "exp", "never"), MemoryBatchSource([1], 0, False))
    except ConfigError as exc:
        assert "does not support torch.distributed" in str(exc)
    else:
        raise AssertionError("a TrainingEngine without gradient averaging ran distributed")
    try:  # a sampler that is not this rank's shard
        make_trainer(tmp / "data.hdf5", tmp / "exp", "never")
    except ConfigError as exc:
        assert "rank/world_size (0, 1)" in str(exc)
    else:
        raise AssertionError("an unsharded sampler was accepted under torch.distributed")


def _signalled(rank: int, world: int, tmp: Path, name: str) -> None:
    from dwi_mtl.training.signals import CheckpointedOnSignal

    trainer = make_trainer(tmp / "data.hdf5", tmp / "exp", name, "ew", rank, world,
                           max_epochs=2, trainer_class=SignalledTrainer)
    outcome = {"rank": rank, "exit_code": 0, "batch": -1}
    try:
        trainer.train_and_validate()
    except CheckpointedOnSignal as exc:
        outcome.update(exit_code=exc.exit_code, batch=trainer.progress.batch)
    (tmp / f"{name}_rank{rank}.json").write_text(json.dumps(outcome))


SCENARIOS = {"train": _train, "signalled": _signalled}
