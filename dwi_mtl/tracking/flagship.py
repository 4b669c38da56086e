"""The flagship demo: multi-task tractography learning on real diffusion data, then tracking.

On the embedded demo dataset (:func:`dwi_mtl.demo.build_demo_dataset`: four subjects made
offline from real DWI shipped in dipy; two for training, one for validation, one held out):

1. a :class:`~dwi_mtl.models.RecurrentDirectionModel` (GRU over spherical-harmonic features
   and the two previous directions) is the **shared** network of two tasks trained jointly by
   the :class:`~dwi_mtl.mtl.MTLTrainer`: ``direction`` (next-step direction, cosine loss, with
   the angular error as metric) and ``eos`` (does the streamline end here: binary
   cross-entropy, with accuracy and recall of the ends as metrics), combined by uncertainty
   weighting (``"uw"``); both tasks read the same forward pass of each batch
   (:func:`joint_outputs`, the trainer's ``joint_forward``), in training and in validation
   (the validation subject's batches, read once for both tasks);
2. the best epoch's model (lowest validation angular error) is evaluated on the **held-out**
   subject: mean angular error against the teacher (DTI) streamlines at every point;
3. it tracks the held-out subject from seeds in its FA > 0.1 mask, stopping by its own
   end-of-streamline prediction (no stopping mask), and the share of tracked streamlines that
   stay inside the mask is reported (with the teacher's, for scale);
4. PNG training curves and the tractogram (.trk, held-out subject space) are written, and the
   trained model is saved in ``<experiment>/tracking_model`` so that
   ``dwi_mtl_track_from_model <experiment> tracking_model out.trk --seeding_group fa
   --seeding_threshold 0.1`` tracks with it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dwi_mtl.models.recurrent_model import RecurrentDirectionModel
from dwi_mtl.models.sequence_features import last_point_mask

logger = logging.getLogger(__name__)

#: FA threshold of the demo's teacher tractography (its tracking mask).
FA_THRESHOLD = 0.1
#: Folder (inside the experiment) of the trained tracking model, for dwi_mtl_track_from_model.
TRACKING_MODEL = "tracking_model"


@dataclass
class FlagshipSettings:
    """Sizes of a flagship run (``quick()`` for the test suite)."""

    max_epochs: int = 12
    batch_size: int = 100
    train_batches: int = 40
    valid_batches: int = 10
    hidden_size: int = 64
    learning_rate: float = 0.005
    seeds_per_voxel: int = 2
    seed: int = 1234

    @classmethod
    def quick(cls) -> FlagshipSettings:
        """A few tiny batches and epochs (seconds)."""
        return cls(max_epochs=2, batch_size=20, train_batches=3, valid_batches=2,
                   hidden_size=16, seeds_per_voxel=1)


@dataclass
class FlagshipResult:
    """What the demo measured and wrote."""

    held_out_angular_error: float
    validation_angular_error: float
    tracked_streamlines: int
    share_inside_mask: float
    mean_points_inside_mask: float
    teacher_share_inside_mask: float
    best_epoch: int
    experiment: str
    tractogram: str
    plots: list[str]


def model_outputs(blocks: Any, heads: Any, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(head outputs (P, D), is_last (P,))`` of the shared model on ``batch`` (a task's own
    forward; the trainer computes both tasks' at once with :func:`joint_outputs`)."""
    return blocks["tracker"](batch.inputs, batch.lengths, batch.points), \
        last_point_mask(batch.lengths)


def joint_outputs(blocks: Any, heads: Any, batch: Any) -> dict[str, Any]:
    """The MTLTrainer's ``joint_forward``: one pass of the shared model for both tasks."""
    outputs = model_outputs(blocks, heads, batch)
    return {"direction": outputs, "eos": outputs}


def build_tasks(model: RecurrentDirectionModel, data: Any) -> list[Any]:
    """The ``direction`` and ``eos`` MTL tasks over the shared model's outputs.

    Args:
        model: the shared model (``eos=True``).
        data: the ``(BatchSampler, BatchLoader)`` pair shared by both tasks; they are
            validated on its dataset's validation subject (jointly, see the module doc).
    """
    from torch import nn

    from dwi_mtl.mtl import MTLTask

    head = model.head

    def direction_loss(out: Any, batch: Any) -> torch.Tensor:
        return head.losses(out[0], batch.directions, out[1])["direction"]

    def eos_loss(out: Any, batch: Any) -> torch.Tensor:
        return head.losses(out[0], batch.directions, out[1])["eos"]

    def angular_error(out: Any, batch: Any) -> float:
        return float(head.angular_error(out[0][~out[1]], batch.directions).mean())

    def eos_accuracy(out: Any, batch: Any) -> float:
        stop = head.stop_probability(out[0])
        return float(((stop > 0.5) == out[1]).float().mean()) if stop is not None else 0.0

    def eos_recall(out: Any, batch: Any) -> float:
        stop = head.stop_probability(out[0])
        return float((stop[out[1]] > 0.5).float().mean()) if stop is not None else 0.0

    return [
        MTLTask("direction", nn.Identity(), direction_loss, data, forward=model_outputs,
                metrics={"angular_error": angular_error}),
        MTLTask("eos", nn.Identity(), eos_loss, data, forward=model_outputs,
                metrics={"accuracy": eos_accuracy, "recall": eos_recall}),
    ]


def run_flagship(experiments_path: str | Path, experiment_name: str = "flagship",
                 settings: FlagshipSettings | None = None,
                 cache_dir: str | Path | None = None, resume: bool = False,
                 comet_mode: str = "disabled") -> FlagshipResult:
    """Train, evaluate on the held-out subject and track it; see the module doc.

    Args:
        experiments_path: parent folder of the experiment (created when missing).
        experiment_name: the experiment's folder (must not exist unless ``resume``).
        settings: sizes (default: the full demo; ``FlagshipSettings.quick()`` for tests).
        cache_dir: demo dataset cache (default ``$DWI_MTL_CACHE`` or ``~/.cache/dwi_mtl``).
        resume: continue the experiment from its latest checkpoint (exactly; e.g. with a
            larger ``settings.max_epochs``), then evaluate and track again.
        comet_mode: ``"online"``, ``"offline"`` or ``"disabled"``.

    Returns:
        The measured figures and written paths (also saved as ``results.json`` in the
        experiment folder).
    """
    from dwi_mtl.data import MultiSubjectDataset
    from dwi_mtl.demo import build_demo_dataset
    from dwi_mtl.logging.plots import plot_training_curves
    from dwi_mtl.mtl import MTLTrainer
    from dwi_mtl.tracking.model_loading import save_tracking_model
    from dwi_mtl.training import BatchLoader, BatchSampler
    from dwi_mtl.training.checkpoint import read_state_folder

    settings = settings or FlagshipSettings()
    torch.manual_seed(settings.seed)
    dataset = MultiSubjectDataset(build_demo_dataset(cache_dir), lazy=False)
    # capped by the sampler: each epoch goes on through the streamlines where the last stopped
    sampler = BatchSampler(dataset, "streamlines", settings.batch_size, seed=settings.seed,
                           max_batches_per_epoch_training=settings.train_batches,
                           max_batches_per_epoch_validation=settings.valid_batches)
    loader = BatchLoader(dataset, "streamlines", input_group="sh", reverse_ratio=0.5,
                         noise_gaussian_size=0.05, seed=settings.seed)
    model = RecurrentDirectionModel(loader.nb_input_features, settings.hidden_size,
                                    nb_previous_dirs=2, dropout=0.1, eos=True)
    experiments_path = Path(experiments_path)
    experiments_path.mkdir(parents=True, exist_ok=True)
    trainer = MTLTrainer(
        {"tracker": model}, build_tasks(model, (sampler, loader)), experiments_path,
        experiment_name, schedule="joint", joint_forward=joint_outputs, weighting="uw",
        learning_rates=settings.learning_rate, clip_grad=1.0,
        best_model_criterion="validation_direction_angular_error",
        max_epochs=settings.max_epochs, patience=4,
        seed=settings.seed, progress_bar=None, log_every_n_batches=20, resume=resume,
        comet_mode=comet_mode,
    )
    trainer.train_and_validate()
    best = read_state_folder(trainer.experiment.best_model)
    trainer.model.load_state_dict(best["model"])
    model.eval()
    plots = plot_training_curves(trainer.experiment.logs, trainer.experiment.plots)
    save_tracking_model(trainer.experiment.path, TRACKING_MODEL, model, loader, best["epoch"])
    result = _evaluate(model, dataset, loader, settings, trainer, int(best["epoch"]), plots)
    (trainer.experiment.path / "results.json").write_text(json.dumps(asdict(result), indent=2))
    return result


def _evaluate(model: RecurrentDirectionModel, dataset: Any, loader: Any,
              settings: FlagshipSettings, trainer: Any, best_epoch: int,
              plots: list[Path]) -> FlagshipResult:
    """Held-out angular error, tracking of the held-out subject, share inside the mask."""
    from dwi_mtl.tracking.evaluation import angular_error_on_subset, fraction_inside_mask
    from dwi_mtl.tracking.io import save_tractogram
    from dwi_mtl.tracking.seeding import seeds_from_mask
    from dwi_mtl.tracking.tracker import Tracker, TrackingOptions

    held_out = angular_error_on_subset(model, loader, "testing")
    validation = angular_error_on_subset(model, loader, "validation")
    subset = dataset.testing
    mask = subset.get_volume(0, "fa")[..., 0] > FA_THRESHOLD
    options = TrackingOptions(step_size=1.0, max_angle=60.0, min_length=5.0, max_length=60.0,
                              seed=settings.seed)
    tracker = Tracker(model, subset.get_volume(0, "sh"), subset.get_voxres(0, "sh"), options)
    seeds = seeds_from_mask(mask, settings.seeds_per_voxel, settings.seed)
    streamlines = tracker.track(seeds)
    share, mean_points = fraction_inside_mask(streamlines, mask)
    points, lengths = subset.get_streamlines(0, "streamlines",
                                             np.arange(subset.nb_streamlines(0, "streamlines")))
    teacher = np.split(points, np.cumsum(lengths)[:-1])
    teacher_share, _ = fraction_inside_mask(teacher, mask)
    tractogram = save_tractogram(trainer.experiment.path / "held_out_tracking.trk", streamlines,
                                 subset.get_affine(0, "sh"), mask.shape)
    logger.info("held-out subject %s: mean angular error %.1f degrees (validation %.1f); "
                "%d streamlines tracked, %.1f%% inside the FA > %.1f mask (teacher %.1f%%)",
                subset.subject_names[0], held_out, validation, len(streamlines), 100 * share,
                FA_THRESHOLD, 100 * teacher_share)
    return FlagshipResult(held_out, validation, len(streamlines), share, mean_points,
                          teacher_share, best_epoch, str(trainer.experiment.path),
                          str(tractogram), [str(p) for p in plots])
