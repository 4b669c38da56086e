"""The training tutorial (shared/seeds/002, deep_pipe's "Training" page) run as tests.

Each test is one of the tutorial's code blocks with only the import paths changed
(``dpipe.torch`` / ``dpipe.batch_iter`` / ``dpipe.train.policy`` -> ``dwi_mtl.training``),
``MNIST('PATH TO DATA')`` replaced by scikit-learn's 8x8 digits held in memory,
``dpipe.layers.PyramidPooling`` by a small torch layer, ``'~/my_new_model'`` by a temporary
folder, and ``n_iters_per_epoch`` reduced so each test takes about a second.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

N_ITERS_PER_EPOCH = 2  # the tutorial uses 2000 on MNIST


class PyramidPooling(nn.Module):
    """Global pooling (one pyramid level), the role of ``dpipe.layers.PyramidPooling`` here."""

    def __init__(self, pooling):
        super().__init__()
        self.pooling = pooling

    def forward(self, x):
        return self.pooling(x, kernel_size=x.shape[2:]).flatten(1)


class layers:  # noqa: N801 - stands for the ``dpipe.layers`` module of the tutorial
    PyramidPooling = PyramidPooling


class MNIST:
    """In-memory stand-in for ``dpipe.tests.mnist.resources.MNIST``: 1,797 8x8 digits."""

    def __init__(self, path=None):
        digits = load_digits()
        self.images = (digits.images[:, None] / 16.0).astype(np.float32)
        self.labels = digits.target.astype(np.int64)
        self.ids = list(range(len(self.labels)))

    def load_image(self, i):
        return self.images[i]

    def load_label(self, i):
        return self.labels[i]


def build_model(model_class=None):
    """The tutorial's "Model" block."""
    from dwi_mtl.training import TorchModel

    torch.manual_seed(0)
    architecture = nn.Sequential(
        nn.Conv2d(1, 32, kernel_size=3),
        nn.ReLU(),
        nn.Conv2d(32, 64, kernel_size=3),
        nn.ReLU(),
        nn.Conv2d(64, 128, kernel_size=3),

        layers.PyramidPooling(nn.functional.max_pool2d), # global pooling
        nn.ReLU(),
        nn.Linear(128, 10),
    )
    model_class = model_class or TorchModel
    model = model_class(architecture, nn.Softmax(-1), nn.CrossEntropyLoss(), torch.optim.Adam)
    return model


def build_batch_iter(dataset=None, ids=None):
    """The tutorial's "Batch iterator" block (``random_state`` added for reproducibility)."""
    from dwi_mtl.training import Infinite, load_by_random_id

    dataset = dataset or MNIST('PATH TO DATA')
    batch_iter = Infinite(
        load_by_random_id(dataset.load_image, dataset.load_label, ids=ids or dataset.ids,
                          random_state=0),
        batch_size=100, n_iters_per_epoch=N_ITERS_PER_EPOCH,
    )
    return batch_iter


def weights_of(model):
    return [p.detach().clone() for p in model.architecture.parameters()]


def test_training_the_model():
    from dwi_mtl.training import train_model

    dataset = MNIST()
    model = build_model()
    batch_iter = build_batch_iter(dataset)
    before = model.do_inf_step(dataset.images[:500]).argmax(-1)

    train_model(model, batch_iter, n_epochs=10, lr=1e-3)

    after = model.do_inf_step(dataset.images[:500]).argmax(-1)
    accuracy_before = np.mean(before == dataset.labels[:500])
    assert np.mean(after == dataset.labels[:500]) > max(0.5, accuracy_before)


def test_logging_and_checkpoints(tmp_path):
    from dwi_mtl.training import train_model

    model, batch_iter = build_model(), build_batch_iter()
    root = tmp_path / "my_new_model"
    train_model(model, batch_iter, n_epochs=10, lr=1e-3,
                log_path=str(root / 'logs'), checkpoints_path=str(root / 'checkpoints'))

    events = EventAccumulator(str(root / "logs"))
    events.Reload()
    assert events.Tags()["scalars"]
    assert any((root / "checkpoints").iterdir())


def test_resume_after_keyboard_interrupt_matches_uninterrupted(tmp_path):
    from dwi_mtl.training import Policy, train_model

    class Interrupt(Policy):  # "something bad happened, e.g. KeyboardInterrupt"
        def epoch_started(self, epoch):
            if epoch == 4 and not interrupted:
                interrupted.append(epoch)
                raise KeyboardInterrupt

    interrupted: list[int] = []
    root = tmp_path / "my_new_model"
    model, batch_iter = build_model(), build_batch_iter()
    with pytest.raises(KeyboardInterrupt):
        train_model(model, batch_iter, n_epochs=10, lr=1e-3, interrupt=Interrupt(),
                    log_path=str(root / 'logs'), checkpoints_path=str(root / 'checkpoints'))
    # start from where you left off
    train_model(model, batch_iter, n_epochs=10, lr=1e-3, interrupt=Interrupt(),
                log_path=str(root / 'logs'), checkpoints_path=str(root / 'checkpoints'))

    reference, reference_iter = build_model(), build_batch_iter()
    train_model(reference, reference_iter, n_epochs=10, lr=1e-3, interrupt=Interrupt(),
                checkpoints_path=str(tmp_path / "reference"))
    assert interrupted == [4]
    for got, want in zip(weights_of(model), weights_of(reference)):
        assert torch.equal(got, want)


def test_policies_early_stopping_with_train_loss_stop():
    # the tutorial's block, verbatim but for the import path
    import numpy as np

    from dwi_mtl.training import EarlyStopping, Policy

    class TrainLossStop(Policy):
        def epoch_finished(self, epoch: int, *, train_losses, metrics: dict = None):
            if np.mean(train_losses) < 1e-5:
                raise EarlyStopping

    from dwi_mtl.training import train_model

    epochs_run: list[int] = []

    class CountEpochs(Policy):
        def epoch_started(self, epoch):
            epochs_run.append(epoch)

    model = build_model()
    batch_iter = build_batch_iter(ids=[0, 1])  # two digits: memorised in a few steps
    train_model(model, batch_iter, n_epochs=100, lr=1e-2, stop=TrainLossStop(),
                count=CountEpochs())
    assert 1 <= len(epochs_run) < 100


def test_policies_with_values_weighted_model(capsys):
    from dwi_mtl.training import Exponential, TorchModel, train_model

    class WeightedModel(TorchModel):
        def do_train_step(self, *inputs, lr, weights):
            print('I received these weights:', weights)
            # do something with the weights ...
            # perform a train step ...
            loss = super().do_train_step(*inputs, lr=lr)
            return loss

    model = build_model(WeightedModel)
    batch_iter = build_batch_iter()
    train_model(model, batch_iter, n_epochs=10, lr=1e-3, weights=Exponential(initial=10, multiplier=0.5))  # noqa: E501

    lines = capsys.readouterr().out.splitlines()
    expected = [f"I received these weights: {10.0 * 0.5 ** epoch}" for epoch in range(10)]
    assert lines == [line for line in expected for _ in range(N_ITERS_PER_EPOCH)]
    assert lines[:3] == ["I received these weights: 10.0", "I received these weights: 10.0",
                         "I received these weights: 5.0"]


def test_validation(tmp_path):
    from dwi_mtl.training import train_model

    def validate():
        return {
            'acuracy': 0.95,
            'roc_auc': 0.91,
        }

    model, batch_iter = build_model(), build_batch_iter()
    train_model(model, batch_iter, n_epochs=2, lr=1e-3, validate=validate,
                log_path=str(tmp_path / "logs"))
    events = EventAccumulator(str(tmp_path / "logs"))
    events.Reload()
    tags = events.Tags()["scalars"]
    accuracy = [tag for tag in tags if tag.endswith("acuracy")]
    assert len(accuracy) == 1
    assert [e.value for e in events.Scalars(accuracy[0])] == pytest.approx([0.95, 0.95])
