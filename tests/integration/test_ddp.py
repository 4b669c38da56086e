"""Distributed training on 2 CPU ranks (gloo, torch.multiprocessing.spawn) against 1 process.

2 ranks with global batch B must end with the weights (to float tolerance) and logs of one
process with batch B, for EW and for a gradient-combination method (PCGrad); runs resume with
another number of ranks; rank 0 alone writes; SIGTERM on one rank stops both after one
checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dwi_mtl.logging.npy_history import load_npy_logs
from dwi_mtl.training.checkpoint import CheckpointManager
from tests.integration.test_ddp_workers import (
    TwoTaskTrainer,
    make_trainer,
    spawn,
)
from tests.unit.training.trainer_setup import make_hdf5

pytestmark = pytest.mark.distributed

COMPARED_LOGS = ("training_loss_per_batch", "training_loss_direction_per_batch",
                 "training_nb_streamlines_per_batch", "training_weight_length_per_batch",
                 "validation_loss_per_epoch", "validation_loss_length_per_epoch",
                 "validation_nb_points_per_batch", "training_grad_norm_before_clip_per_batch")


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ddp")
    make_hdf5(folder)
    (folder / "exp").mkdir()
    return folder


def _single(tmp: Path, name: str, weighting: str, max_epochs: int,
            **options: object) -> TwoTaskTrainer:
    trainer = make_trainer(tmp / "data.hdf5", tmp / "exp", name, weighting,
                           max_epochs=max_epochs, **options)
    trainer.train_and_validate()
    return trainer


def _assert_same_weights(expected: dict[str, torch.Tensor], path: Path) -> None:
    found = torch.load(path)
    for key, value in expected.items():
        torch.testing.assert_close(found[key], value, rtol=1e-5, atol=1e-6, msg=key)


def _assert_same_logs(tmp: Path, reference: str, other: str) -> None:
    logs_a = load_npy_logs(tmp / "exp" / reference / "logs")
    logs_b = load_npy_logs(tmp / "exp" / other / "logs")
    for key in COMPARED_LOGS:
        np.testing.assert_allclose(logs_b[key], logs_a[key], rtol=1e-5, atol=1e-6, err_msg=key)


#: DWA with 1-step windows and accumulation over 2 batches: loss statistics reduced across
#: ranks, on_step_end fed the global cycle losses, gradients synced once per cycle.
DWA = {"weighting_kwargs": {"window": 1}, "gradient_accumulation_steps": 2}


def test_two_ranks_match_one_process_and_only_rank_0_writes(tmp: Path) -> None:
    references = {w: _single(tmp, f"single_{w}", w, 2, **(DWA if w == "dwa" else {}))
                  for w in ("ew", "pcgrad", "dwa")}
    spawn("train", tmp, runs=[
        {"name": "ddp_ew", "weighting": "ew", "max_epochs": 2,
         "options": {"tensorboard": True}},
        {"name": "ddp_pcgrad", "weighting": "pcgrad", "max_epochs": 2},
        {"name": "ddp_dwa", "weighting": "dwa", "max_epochs": 2, "options": DWA},
    ])
    weights = load_npy_logs(tmp / "exp" / "ddp_dwa" / "logs")["training_weight_length_per_batch"]
    assert not np.allclose(weights, 1.0)  # DWA left its warm-up
    for weighting, reference in references.items():
        state = reference.model.state_dict()
        for rank in (0, 1):  # every rank ends with the same weights as one process
            _assert_same_weights(state, tmp / f"ddp_{weighting}_rank{rank}.pt")
        _assert_same_logs(tmp, f"single_{weighting}", f"ddp_{weighting}")
        best = torch.load(tmp / "exp" / f"ddp_{weighting}" / "best_model" / "state.pt")
        assert best["epoch"] == reference.monitor.best_epoch
    # TensorBoard event files carry the writer's pid: a single writer, rank 0
    events = list((tmp / "exp" / "ddp_ew" / "tensorboard").rglob("events.out.tfevents.*"))
    assert events and len({path.name.split(".")[-2] for path in events}) == 1


def test_resume_with_another_number_of_ranks(tmp: Path) -> None:
    reference = _single(tmp, "resume_reference", "pcgrad", 2)
    _single(tmp, "one_then_two", "pcgrad", 1)  # epoch 0 on 1 process, epoch 1 on 2 ranks
    spawn("train", tmp, runs=[
        {"name": "two_then_one", "weighting": "pcgrad", "max_epochs": 1},
        {"name": "one_then_two", "resume": True, "max_epochs": 2},
    ])
    resumed = TwoTaskTrainer.init_from_checkpoint(tmp / "exp", "two_then_one", max_epochs=2)
    assert resumed.batch_sampler.world_size == 1
    resumed.train_and_validate()
    state = reference.model.state_dict()
    torch.save(resumed.model.state_dict(), tmp / "two_then_one_final.pt")
    _assert_same_weights(state, tmp / "two_then_one_final.pt")
    _assert_same_weights(state, tmp / "one_then_two_rank1.pt")
    _assert_same_logs(tmp, "resume_reference", "two_then_one")
    _assert_same_logs(tmp, "resume_reference", "one_then_two")


def test_sigterm_on_one_rank_stops_both_after_one_checkpoint(tmp: Path) -> None:
    spawn("signalled", tmp, name="signalled")
    outcomes = [json.loads((tmp / f"signalled_rank{r}.json").read_text()) for r in (0, 1)]
    assert [o["exit_code"] for o in outcomes] == [3, 3]  # EXIT_CHECKPOINTED_ON_SIGNAL
    # rank 1 got it after batch 1 was agreed on; the next boundary (after batch 2) tells all
    assert [o["batch"] for o in outcomes] == [3, 3]
    manager = CheckpointManager(tmp / "exp" / "signalled" / "checkpoint")
    state, info = manager.load_latest()
    assert info.step == 2  # the start checkpoint, then the single one on the signal
    assert state["progress"]["batch"] == 3 and state["progress"]["epoch"] == 0
    resumed = TwoTaskTrainer.init_from_checkpoint(tmp / "exp", "signalled")
    resumed.train_and_validate()
    assert resumed.epoch == 2
