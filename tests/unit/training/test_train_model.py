"""train_model: values and policies reach do_train_step, early stopping, validate, logs, errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from dwi_mtl.errors import CheckpointError, ConfigError, NonFiniteError
from dwi_mtl.training import (
    EarlyStopping,
    Exponential,
    Infinite,
    Policy,
    Schedule,
    TorchModel,
    load_by_random_id,
    train_model,
)
from dwi_mtl.training.checkpoint import CheckpointManager

RNG = np.random.default_rng(0)
X = RNG.normal(size=(64, 4)).astype(np.float32)
Y = (X[:, 0] > 0).astype(np.int64)
N_ITERS = 3


def make_batch_iter(seed: int = 0) -> Infinite:
    source = load_by_random_id(X.__getitem__, Y.__getitem__, ids=range(64), random_state=seed)
    return Infinite(source, batch_size=8, n_iters_per_epoch=N_ITERS)


class RecordingModel(TorchModel):
    """Records the keyword values of every step."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[dict[str, Any]] = []

    def do_train_step(self, *inputs, lr, weights=1.0):
        self.calls.append({"lr": lr, "weights": weights})
        return super().do_train_step(*inputs, lr=lr)


def make_model(cls: type = RecordingModel) -> Any:
    torch.manual_seed(0)
    architecture = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    return cls(architecture, nn.Softmax(-1), nn.CrossEntropyLoss(), torch.optim.SGD)


def steps_per_epoch(values: list[Any]) -> list[list[Any]]:
    return [values[i:i + N_ITERS] for i in range(0, len(values), N_ITERS)]


def tensorboard_scalars(path) -> dict[str, list[float]]:
    events = EventAccumulator(str(path))
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_exponential_delivers_its_value_by_epoch():
    model = make_model()
    train_model(model, make_batch_iter(), n_epochs=3, lr=0.1,
                weights=Exponential(initial=10, multiplier=0.5))
    weights = [call["weights"] for call in model.calls]
    assert steps_per_epoch(weights) == [[10.0] * 3, [5.0] * 3, [2.5] * 3]
    assert {call["lr"] for call in model.calls} == {0.1}


def test_lr_policy_and_constants_reach_the_step_and_the_optimizer():
    model = make_model()
    train_model(model, make_batch_iter(), n_epochs=2, lr=Schedule(0.1, {1: 0.01}), weights=3.0)
    assert steps_per_epoch([c["lr"] for c in model.calls]) == [[0.1] * 3, [0.01] * 3]
    assert {c["weights"] for c in model.calls} == {3.0}
    assert model.optimizer.param_groups[0]["lr"] == 0.01


def test_base_torch_model_takes_optimizer_options_as_values():
    model = make_model(TorchModel)
    train_model(model, make_batch_iter(), n_epochs=1, lr=0.1, momentum=0.5)
    assert model.optimizer.param_groups[0]["momentum"] == 0.5


class StrictModel(TorchModel):
    def do_train_step(self, *inputs, lr, weights):
        raise AssertionError("no step may run when the keywords are wrong")


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (StrictModel, {"weights": 1.0, "wieghts": 2.0}, "keyword 'wieghts' is not a parameter"),
        (StrictModel, {}, "requires the keyword 'weights'"),
        (TorchModel, {"weights": Exponential(1.0, 0.5)}, "keyword 'weights' is neither"),
    ],
)
def test_a_wrong_keyword_fails_before_the_first_step(cls, kwargs, message, tmp_path):
    model = make_model(cls)
    before = [p.detach().clone() for p in model.architecture.parameters()]
    with pytest.raises(ConfigError, match=message):
        train_model(model, make_batch_iter(), n_epochs=2, lr=0.1,
                    checkpoints_path=tmp_path / "run", **kwargs)
    for got, want in zip(model.architecture.parameters(), before):
        assert torch.equal(got, want)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_epochs": 0}, "n_epochs"),
        ({"n_epochs": 1, "lr": None}, "lr is required"),
        ({"n_epochs": 1, "batch_iter": 5}, "batch_iter must be"),
    ],
)
def test_bad_arguments_give_config_errors(kwargs, message):
    arguments = {"model": make_model(), "batch_iter": make_batch_iter(), "lr": 0.1, **kwargs}
    with pytest.raises(ConfigError, match=message):
        train_model(**arguments)


class Recorder(Policy):
    """Records every hook call."""

    def __init__(self, stop_at: tuple[str, int, int] | None = None) -> None:
        self.events: list[tuple] = []
        self.stop_at = stop_at

    def _maybe_stop(self, hook: str, epoch: int, iteration: int = -1) -> None:
        if self.stop_at == (hook, epoch, iteration):
            raise EarlyStopping

    def epoch_started(self, epoch):
        self.events.append(("epoch_started", epoch))
        self._maybe_stop("epoch_started", epoch)

    def train_step_started(self, epoch, iteration):
        self.events.append(("step_started", epoch, iteration))
        self._maybe_stop("step_started", epoch, iteration)

    def train_step_finished(self, epoch, iteration, loss):
        self.events.append(("step_finished", epoch, iteration))
        self._maybe_stop("step_finished", epoch, iteration)

    def validation_started(self, epoch, train_losses):
        self.events.append(("validation_started", epoch, len(train_losses)))

    def epoch_finished(self, epoch, *, train_losses, metrics=None):
        self.events.append(("epoch_finished", epoch, len(train_losses), metrics))
        self._maybe_stop("epoch_finished", epoch)

    def state_dict(self):
        return {}


def test_policies_get_every_hook_with_losses_and_validate_metrics():
    recorder = Recorder()
    metrics_seen = iter([{"acc": 0.5}, {"acc": 0.75}])
    train_model(make_model(), make_batch_iter(), n_epochs=2, lr=0.1, rec=recorder,
                validate=lambda: next(metrics_seen))
    expected: list[tuple] = []
    for epoch, acc in ((0, 0.5), (1, 0.75)):
        expected.append(("epoch_started", epoch))
        for i in range(N_ITERS):
            expected += [("step_started", epoch, i), ("step_finished", epoch, i)]
        expected += [("validation_started", epoch, N_ITERS),
                     ("epoch_finished", epoch, N_ITERS, {"acc": acc})]
    assert recorder.events == expected


@pytest.mark.parametrize(
    "stop_at, epochs_done, last_event",
    [
        (("epoch_finished", 1, -1), 2, ("epoch_finished", 1, N_ITERS, None)),
        (("step_finished", 1, 0), 2, ("epoch_finished", 1, 1, None)),
        (("step_started", 1, 1), 2, ("epoch_finished", 1, 1, None)),
        (("epoch_started", 1, -1), 1, ("epoch_started", 1)),
    ],
)
def test_early_stopping_ends_cleanly_and_a_second_call_returns_at_once(
    stop_at, epochs_done, last_event, tmp_path
):
    model = make_model()
    recorder = Recorder(stop_at)
    run = dict(n_epochs=5, lr=0.1, log_path=tmp_path / "tb", checkpoints_path=tmp_path / "ckpt")
    train_model(model, make_batch_iter(), rec=recorder, **run)
    assert recorder.events[-1] == last_event

    state, _ = CheckpointManager(tmp_path / "ckpt" / "checkpoint").load_latest()
    assert state["progress"]["stopped"].startswith("EarlyStopping")
    assert state["progress"]["epoch"] == epochs_done
    assert len(tensorboard_scalars(tmp_path / "tb")["epoch/training_loss"]) == epochs_done

    again = make_model()
    train_model(again, make_batch_iter(), rec=Recorder(), **run)
    assert again.calls == []
    for got, want in zip(again.architecture.parameters(), model.architecture.parameters()):
        assert torch.equal(got, want)


def test_a_finished_run_returns_at_once_and_continues_with_more_epochs(tmp_path):
    run = dict(lr=0.1, checkpoints_path=tmp_path / "ckpt")
    train_model(make_model(), make_batch_iter(), n_epochs=2, **run)
    again = make_model()
    train_model(again, make_batch_iter(), n_epochs=2, **run)
    assert again.calls == []
    more = make_model()
    train_model(more, make_batch_iter(), n_epochs=3, **run)
    assert len(more.calls) == N_ITERS


def test_tensorboard_has_batch_epoch_validation_and_policy_tags(tmp_path):
    train_model(make_model(), make_batch_iter(), n_epochs=2, lr=Exponential(0.1, 0.5),
                weights=Exponential(10, 0.5), validate=lambda: {"acc": 0.5, "name": "x"},
                log_path=tmp_path / "tb")
    scalars = tensorboard_scalars(tmp_path / "tb")
    assert len(scalars["batch/loss"]) == 2 * N_ITERS
    assert len(scalars["epoch/training_loss"]) == 2
    assert scalars["epoch/validation_acc"] == [0.5, 0.5]
    assert scalars["epoch/lr"] == pytest.approx([0.1, 0.05])
    assert scalars["epoch/weights"] == pytest.approx([10.0, 5.0])
    assert not any("name" in tag for tag in scalars)


def test_validate_must_return_a_dict():
    with pytest.raises(ConfigError, match="validate\\(\\) must return a dict"):
        train_model(make_model(), make_batch_iter(), n_epochs=1, lr=0.1, validate=lambda: 0.9)


def test_checkpoint_with_other_policies_is_refused(tmp_path):
    run = dict(n_epochs=1, lr=0.1, checkpoints_path=tmp_path / "ckpt")
    train_model(make_model(), make_batch_iter(), rec=Recorder(), **run)
    with pytest.raises(CheckpointError, match="policies \\['rec'\\]"):
        train_model(make_model(), make_batch_iter(), n_epochs=2, lr=0.1,
                    checkpoints_path=tmp_path / "ckpt", other=Recorder())


def test_a_non_finite_loss_from_a_custom_step_stops_with_a_clear_error(tmp_path):
    class NaNModel(TorchModel):
        def do_train_step(self, *inputs, lr):
            return float("nan")

    with pytest.raises(NonFiniteError, match="epoch 0, batch 0"):
        train_model(make_model(NaNModel), make_batch_iter(), n_epochs=1, lr=0.1,
                    checkpoints_path=tmp_path / "ckpt")


def test_checkpoints_path_is_a_full_experiment_folder(tmp_path):
    train_model(make_model(), make_batch_iter(), n_epochs=2, lr=0.1,
                checkpoints_path=tmp_path / "ckpt")
    folder = tmp_path / "ckpt"
    assert (folder / "logs" / "training_loss_per_batch.npy").is_file()
    assert len(np.load(folder / "logs" / "training_loss_per_epoch.npy")) == 2
    assert (folder / "best_model").is_dir()
    assert CheckpointManager(folder / "checkpoint").exists()


def test_a_batch_sampler_and_loader_pair_is_a_batch_iter(tmp_path):
    from dwi_mtl.data.multi_subject_dataset import MultiSubjectDataset
    from dwi_mtl.data.synthetic import write_synthetic_hdf5
    from dwi_mtl.training import BatchLoader, BatchSampler

    path = write_synthetic_hdf5(tmp_path / "data.hdf5", nb_subjects=4, volume_shape=(6, 6, 6),
                                nb_features=2, nb_streamlines=20, min_length_mm=3.0,
                                max_length_mm=6.0, step_size=0.5, seed=1)
    dataset = MultiSubjectDataset(path)

    class DirectionModel(TorchModel):
        def do_train_step(self, batch, *, lr):
            self.seen.append((batch.epoch, batch.batch_index))
            self.set_optimizer_options(lr=lr)
            start = torch.cat([s[:-1] for s in batch.streamlines])
            loss = nn.functional.mse_loss(self.architecture(start), batch.directions)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            return loss.item()

    def make_sampler() -> BatchSampler:
        return BatchSampler(dataset, "streamlines", 5, max_batches_per_epoch_training=3, seed=2)

    torch.manual_seed(0)
    model = DirectionModel(nn.Linear(3, 3), nn.Identity(), nn.MSELoss(), torch.optim.SGD)
    model.seen = []
    before = model.architecture.weight.detach().clone()
    train_model(model, (make_sampler(), BatchLoader(dataset, "streamlines", seed=2)),
                n_epochs=2, lr=0.05, checkpoints_path=tmp_path / "ckpt")

    sampler = make_sampler()
    expected = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        expected += [(items[0].epoch, items[0].batch_index) for items in sampler]
    assert model.seen == expected and len(expected) >= 4
    assert not torch.equal(model.architecture.weight, before)


def test_progress_profiler_and_n_epochs_policies_in_a_run(tmp_path, capsys):
    from dwi_mtl.training import TQDM, NEpochs, TimeProfiler

    model = make_model()
    train_model(model, make_batch_iter(), n_epochs=5, lr=0.1, bar=TQDM(), profiler=TimeProfiler(),
                limit=NEpochs(2), log_path=tmp_path / "tb")
    assert len(model.calls) == 2 * N_ITERS
    scalars = tensorboard_scalars(tmp_path / "tb")
    assert len(scalars["epoch/profiler_epoch"]) == 2
    assert all(value > 0 for value in scalars["epoch/profiler_train_step_mean"])
    assert "epoch 1" in capsys.readouterr().err


def test_interrupted_in_the_first_epoch_and_called_again_with_the_same_objects(tmp_path):
    class Crash(Policy):
        def __init__(self):
            self.armed = True

        def train_step_started(self, epoch, iteration):
            if self.armed and (epoch, iteration) == (0, 2):
                self.armed = False
                raise KeyboardInterrupt

        def state_dict(self):
            return {}

    model, batch_iter, crash = make_model(), make_batch_iter(), Crash()
    run = dict(n_epochs=2, lr=0.1, checkpoints_path=tmp_path / "ckpt", crash=crash)
    with pytest.raises(KeyboardInterrupt):
        train_model(model, batch_iter, **run)
    train_model(model, batch_iter, **run)

    reference, disarmed = make_model(), Crash()
    disarmed.armed = False
    train_model(reference, make_batch_iter(), n_epochs=2, lr=0.1, crash=disarmed)
    for got, want in zip(model.architecture.parameters(), reference.architecture.parameters()):
        assert torch.equal(got, want)


def test_an_engine_batch_source_is_accepted_and_resumed(tmp_path):
    from dwi_mtl.training.batch_sources import MemoryBatchSource

    batches = [(X[i:i + 8], Y[i:i + 8]) for i in range(0, 64, 8)]
    model = make_model()
    train_model(model, MemoryBatchSource(batches, seed=1), n_epochs=2, lr=0.1,
                checkpoints_path=tmp_path / "ckpt")
    assert len(model.calls) == 2 * len(batches)
    more = make_model()
    train_model(more, MemoryBatchSource(batches, seed=1), n_epochs=3, lr=0.1,
                checkpoints_path=tmp_path / "ckpt")
    assert len(more.calls) == len(batches)
