"""Streamline-only models: classifier and auto-encoder train, rebuild and refuse bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dwi_mtl.errors import ConfigError, DataError
from dwi_mtl.models import BundleClassifier, ModelTrainer, StreamlineAutoEncoder
from dwi_mtl.tracking import load_trained_model
from dwi_mtl.training import BatchLoader, BatchSampler
from dwi_mtl.training.batch import BatchItem


def test_bundle_classifier_learns_the_labels_of_a_few_streamlines(batch) -> None:
    torch.manual_seed(0)
    model = BundleClassifier(4, label_key="label", coordinate_scale=16.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(80):
        optimizer.zero_grad()
        model.compute_loss(batch).backward()
        optimizer.step()
    assert float(model.compute_metrics(batch)["accuracy"]) == 1.0
    again = BundleClassifier.from_config(model.get_config())
    again.load_state_dict(model.state_dict())
    torch.testing.assert_close(again(batch.points, batch.lengths),
                               model(batch.points, batch.lengths))


def test_auto_encoder_reconstructs_a_few_streamlines(small_dataset) -> None:
    torch.manual_seed(0)
    loader = BatchLoader(small_dataset, "streamlines", nb_points=12)
    batch = loader.load_batch([BatchItem(0, np.arange(6))])
    model = StreamlineAutoEncoder(nb_points=12, latent_size=8, coordinate_scale=16.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    before = float(model.compute_metrics(batch)["point_distance"].detach())
    for _ in range(200):
        optimizer.zero_grad()
        model.compute_loss(batch).backward()
        optimizer.step()
    after = float(model.compute_metrics(batch)["point_distance"].detach())
    assert after < 1.0 < 5.0 < before  # voxels
    assert model(batch.points, batch.lengths).shape == (6, 12, 3)


def test_classifier_trains_with_model_trainer_and_rebuilds(small_dataset, tmp_path: Path) -> None:
    sampler = BatchSampler(small_dataset, "streamlines", 16, seed=2)
    loader = BatchLoader(small_dataset, "streamlines", data_per_streamline_keys=["label"])
    model = BundleClassifier(4, label_key="label", coordinate_scale=16.0)
    trainer = ModelTrainer(model, tmp_path, "clf", sampler, loader, max_epochs=2,
                           progress_bar=False, device="cpu")
    trainer.train_and_validate()
    logs = np.load(tmp_path / "clf" / "logs" / "validation_accuracy_per_epoch.npy")
    assert logs.shape == (2,) and np.all((logs >= 0) & (logs <= 1))
    rebuilt, params = load_trained_model(tmp_path, "clf")
    assert params["model"]["config"]["nb_classes"] == 4
    for got, want in zip(rebuilt.state_dict().values(), model.state_dict().values(), strict=True):
        assert got.shape == want.shape


def test_bad_configs_and_batches_raise(batch) -> None:
    with pytest.raises(ConfigError, match="nb_classes"):
        BundleClassifier(1)
    with pytest.raises(ConfigError, match="pooling"):
        BundleClassifier(3, pooling="none")
    with pytest.raises(ConfigError, match="coordinate_scale"):
        StreamlineAutoEncoder(coordinate_scale=0)
    with pytest.raises(ConfigError, match="BundleClassifier config"):
        BundleClassifier.from_config({"nb_classes": 3, "bad": 1})
    with pytest.raises(DataError, match="data_per_streamline 'bundle'"):
        BundleClassifier(3).compute_loss(batch)
    with pytest.raises(DataError, match="nb_points=12"):
        StreamlineAutoEncoder(nb_points=12).compute_loss(batch)
