"""Multi-task pre-training of a streamline encoder, then downstream evaluation, on demo data.

Data: the embedded bundles demo (dipy ``minimal_bundles``: 3 bundles, 5 subjects), read with
the library's own pipeline (BatchSampler + BatchLoader per task).

- shared block ``encoder``: a :class:`~dwi_mtl.models.StreamlineEncoder` giving per-point
  features;
- pre-training task ``direction``: predict the next step's direction at every point (cosine
  loss);
- pre-training task ``bundle``: classify each streamline's bundle (AF_L, CST_R, CC);
- downstream task ``length`` (a new label): regress each streamline's length from a copy of
  the encoder and a fresh head, every ``--downstream_every`` epochs; the decorated callback
  scores the fine-tuned copy on the held-out testing subject;
- epoch hook: a scikit-learn random forest on the encoder's pooled features (bundle probe).

Run ``python examples/mtl_pretrain_downstream.py --experiments_path /tmp/exp --name demo``;
add ``--resume`` to continue an interrupted run exactly.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dwi_mtl.cli.common import add_logging_arg, run_cli, setup_logging
from dwi_mtl.data import MultiSubjectDataset
from dwi_mtl.demo import build_bundles_dataset
from dwi_mtl.models.streamline_encoders import PackedStreamlines, StreamlineEncoder
from dwi_mtl.mtl import FineTunedModel, MTLTask, MTLTrainer
from dwi_mtl.training.batch_loader import BatchLoader
from dwi_mtl.training.batch_sampler import BatchSampler

logger = logging.getLogger("mtl_example")
GROUP, SCALE, WIDTH = "bundles", 0.02, 32


def point_features(blocks: nn.ModuleDict, batch: Any) -> torch.Tensor:
    """Per-point encoder features ``(P, WIDTH)`` of a packed batch."""
    return blocks["encoder"](PackedStreamlines(batch.points * SCALE, batch.lengths))


def pooled_features(blocks: nn.ModuleDict, batch: Any) -> torch.Tensor:
    """Mean of each streamline's point features ``(N, WIDTH)``."""
    features = point_features(blocks, batch)
    owner = torch.repeat_interleave(torch.arange(len(batch.lengths)), batch.lengths)
    sums = torch.zeros(len(batch.lengths), features.shape[1]).index_add_(0, owner, features)
    return sums / batch.lengths[:, None].to(features.dtype)


def direction_forward(blocks: nn.ModuleDict, heads: nn.ModuleDict, batch: Any) -> torch.Tensor:
    """Predicted direction at every point but each streamline's last."""
    features = point_features(blocks, batch)
    keep = torch.ones(features.shape[0], dtype=torch.bool)
    keep[torch.cumsum(batch.lengths, 0) - 1] = False
    return heads["head"](features[keep])


def direction_loss(outputs: torch.Tensor, batch: Any) -> torch.Tensor:
    """1 - cosine similarity with the true next direction."""
    return 1.0 - nn.functional.cosine_similarity(outputs, batch.directions, dim=1).mean()


def streamline_forward(blocks: nn.ModuleDict, heads: nn.ModuleDict, batch: Any) -> torch.Tensor:
    """A head on each streamline's pooled features."""
    return heads["head"](pooled_features(blocks, batch))


def bundle_loss(outputs: torch.Tensor, batch: Any) -> torch.Tensor:
    """Cross-entropy of the bundle labels."""
    return nn.functional.cross_entropy(outputs, batch.data_per_streamline["bundle"])


def bundle_accuracy(outputs: torch.Tensor, batch: Any) -> float:
    """Fraction of streamlines in the right bundle."""
    return float((outputs.argmax(1) == batch.data_per_streamline["bundle"]).float().mean())


def streamline_length(points: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Length of each streamline in voxels, scaled to about 1."""
    steps = (points[1:] - points[:-1]).norm(dim=1)
    ends = torch.cumsum(lengths, 0) - 1
    steps[ends[:-1]] = 0.0  # no step between consecutive streamlines
    owner = torch.repeat_interleave(torch.arange(len(lengths)), lengths)[:-1]
    return torch.zeros(len(lengths)).index_add_(0, owner, steps) * SCALE


def length_loss(outputs: torch.Tensor, batch: Any) -> torch.Tensor:
    """Squared error of the predicted length."""
    return ((outputs[:, 0] - streamline_length(batch.points, batch.lengths)) ** 2).mean()


def pipeline(dataset: MultiSubjectDataset, seed: int, keys: tuple[str, ...] = ()) -> Any:
    """A (BatchSampler, BatchLoader) pair of 50 streamlines per batch."""
    return (BatchSampler(dataset, GROUP, 50, 50, seed=seed),
            BatchLoader(dataset, GROUP, data_per_streamline_keys=keys, seed=seed))


def build_trainer(args: argparse.Namespace) -> MTLTrainer:
    """Build data, tasks, shared blocks and the trainer (the same on a resume)."""
    torch.manual_seed(args.seed)
    dataset = MultiSubjectDataset(build_bundles_dataset(args.cache_dir))
    tasks = [
        MTLTask("direction", nn.Linear(WIDTH, 3), direction_loss, pipeline(dataset, 1),
                forward=direction_forward),
        MTLTask("bundle", nn.Linear(WIDTH, 3), bundle_loss, pipeline(dataset, 2, ("bundle",)),
                forward=streamline_forward, metrics={"accuracy": bundle_accuracy}),
    ]
    downstream = MTLTask("length", nn.Linear(WIDTH, 1), length_loss, pipeline(dataset, 3),
                         forward=streamline_forward)
    encoder = StreamlineEncoder(in_features=3, hidden_size=WIDTH, nb_conv_layers=2,
                                pooling="none")
    trainer = MTLTrainer(
        {"encoder": encoder}, tasks, args.experiments_path, args.name, resume=args.resume,
        max_epochs=args.epochs, learning_rates=1e-3, seed=args.seed,
        downstream_tasks=[downstream], downstream_every_n_epochs=args.downstream_every,
        downstream_epochs=2, tensorboard=True, progress_bar=False,
        handle_signals=True,
    )
    add_callbacks(trainer, dataset)
    return trainer


def add_callbacks(trainer: MTLTrainer, dataset: MultiSubjectDataset) -> None:
    """The random-forest probe after each epoch and the downstream test-set score."""
    validation = trainer.tasks["bundle"].valid_source

    @trainer.callback_after_each_epoch
    def random_forest_probe(trainer_: MTLTrainer, epoch: int) -> dict[str, float]:
        from sklearn.ensemble import RandomForestClassifier

        features, labels = [], []
        for batch in validation.begin(0):
            features.append(pooled_features(trainer_.shared_blocks, batch))
            labels.append(batch.data_per_streamline["bundle"])
        x, y = torch.cat(features).numpy(), torch.cat(labels).numpy()
        half = len(y) // 2
        forest = RandomForestClassifier(n_estimators=20, random_state=0).fit(x[:half], y[:half])
        return {"rf_bundle_accuracy": float(forest.score(x[half:], y[half:]))}

    @trainer.callback_foreach_downstream_task()
    def score_testing_subject(task: MTLTask, model: FineTunedModel, epoch: int
                              ) -> dict[str, float]:
        testing = dataset.testing
        ids = list(range(testing.nb_streamlines(0, GROUP)))
        points, lengths = testing.get_streamlines(0, GROUP, ids)
        batch = PackedStreamlines(torch.as_tensor(points), torch.as_tensor(lengths))
        error = length_loss(model(batch), batch)
        return {"test_mse": float(error)}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiments_path", type=Path, required=True)
    parser.add_argument("--name", default="mtl_demo")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--downstream_every", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache_dir", default=None, help="demo data cache folder")
    parser.add_argument("--resume", action="store_true", help="continue the experiment")
    add_logging_arg(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Pre-train, validate each task, evaluate downstream; log the last epoch's figures."""
    args = parse_args(argv)
    setup_logging(args.log_level)
    history = build_trainer(args).train_and_validate()
    for phase, metric in (("validation", "direction_loss"), ("validation", "bundle_accuracy"),
                          ("run", "hook_rf_bundle_accuracy"), ("run", "downstream_length_loss")):
        logger.info("%s %s per epoch: %s", phase, metric, history.epoch_values(phase, metric))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
