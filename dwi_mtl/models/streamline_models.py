"""Streamline-only models: a bundle classifier and an auto-encoder (no volume needed).

Both read the streamline coordinates alone (voxel space, divided by ``coordinate_scale``) with
a :class:`~dwi_mtl.models.StreamlineEncoder` (masked 1D convolutions + pooling) and train
from the batch pipeline's ``StreamlineBatch``:

- :class:`BundleClassifier` predicts a per-streamline label (``data_per_streamline[label_key]``,
  e.g. the bundle id written by the HDF5 creation's ``file_label``); cross-entropy loss,
  accuracy metric.
- :class:`StreamlineAutoEncoder` encodes a streamline to a latent vector and decodes its
  ``nb_points`` points (the batch loader must resample to ``nb_points``); mean squared error
  in voxels, mean point distance metric.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from dwi_mtl.errors import ConfigError, DataError
from dwi_mtl.models.streamline_encoders import PackedStreamlines, StreamlineEncoder


class _CoordinateModel(nn.Module):
    """Shared frame: coordinates -> StreamlineEncoder (pooled) -> latent ``(N, C)``."""

    def __init__(self, hidden_size: int, nb_conv_layers: int, kernel_size: int, pooling: str,
                 coordinate_scale: float) -> None:
        super().__init__()
        if pooling == "none":
            raise ConfigError(f"{type(self).__name__}: pooling must reduce each streamline "
                              "('mean' or 'gru'), got 'none'")
        if not float(coordinate_scale) > 0:
            raise ConfigError(f"{type(self).__name__}: coordinate_scale must be > 0, "
                              f"got {coordinate_scale}")
        self.encoder = StreamlineEncoder(3, hidden_size, nb_conv_layers, kernel_size, pooling)
        self.coordinate_scale = float(coordinate_scale)
        self._config: dict[str, Any] = {
            "hidden_size": hidden_size, "nb_conv_layers": nb_conv_layers,
            "kernel_size": kernel_size, "pooling": pooling,
            "coordinate_scale": float(coordinate_scale),
        }

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-able)."""
        return dict(self._config)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Any:
        """Build the model from :meth:`get_config`'s dict."""
        try:
            return cls(**config)
        except TypeError as exc:
            raise ConfigError(f"{cls.__name__} config: {exc}") from exc

    def encode(self, points: Tensor, lengths: Tensor) -> Tensor:
        """``(N, hidden_size)`` latent of packed streamlines."""
        packed = PackedStreamlines(points / self.coordinate_scale, lengths, None)
        latent: Tensor = self.encoder(packed)
        return latent


class BundleClassifier(_CoordinateModel):
    """Classify streamlines (e.g. into bundles) from their coordinates.

    Args:
        nb_classes: number of labels.
        label_key: the batch's ``data_per_streamline`` key holding the int labels (ask the
            batch loader for it with ``data_per_streamline_keys``).
        hidden_size, nb_conv_layers, kernel_size, pooling: the encoder's.
        coordinate_scale: coordinates are divided by it (e.g. the volume size in voxels).
    """

    def __init__(self, nb_classes: int, label_key: str = "bundle", hidden_size: int = 32,
                 nb_conv_layers: int = 2, kernel_size: int = 3, pooling: str = "mean",
                 coordinate_scale: float = 1.0) -> None:
        super().__init__(hidden_size, nb_conv_layers, kernel_size, pooling, coordinate_scale)
        if isinstance(nb_classes, bool) or int(nb_classes) < 2:
            raise ConfigError(f"BundleClassifier: nb_classes must be >= 2, got {nb_classes}")
        self.label_key = str(label_key)
        self.classifier = nn.Linear(self.encoder.out_features, int(nb_classes))
        self._config.update(nb_classes=int(nb_classes), label_key=self.label_key)

    def forward(self, points: Tensor, lengths: Tensor) -> Tensor:
        """``(N, nb_classes)`` logits."""
        logits: Tensor = self.classifier(self.encode(points, lengths))
        return logits

    def labels(self, batch: Any) -> Tensor:
        """The batch's labels, checked."""
        labels = getattr(batch, "data_per_streamline", {}).get(self.label_key)
        if labels is None:
            raise DataError(f"BundleClassifier: the batch has no data_per_streamline "
                            f"'{self.label_key}'; give the batch loader "
                            f"data_per_streamline_keys=['{self.label_key}']")
        return labels.reshape(-1).long()

    def compute_loss(self, batch: Any) -> Tensor:
        """Cross-entropy against the labels."""
        return nn.functional.cross_entropy(self(batch.points, batch.lengths), self.labels(batch))

    def compute_metrics(self, batch: Any) -> dict[str, Tensor]:
        """``{"loss", "accuracy"}`` from one forward pass."""
        logits, labels = self(batch.points, batch.lengths), self.labels(batch)
        return {"loss": nn.functional.cross_entropy(logits, labels),
                "accuracy": (logits.argmax(dim=1) == labels).float().mean()}


class StreamlineAutoEncoder(_CoordinateModel):
    """Encode a streamline to ``latent_size`` numbers and decode its ``nb_points`` points.

    Args:
        nb_points: points per streamline (the batch loader's ``nb_points``).
        latent_size: width of the code.
        hidden_size, nb_conv_layers, kernel_size, pooling: the encoder's.
        coordinate_scale: coordinates are divided by it before encoding and the decoder's
            output multiplied by it.
    """

    def __init__(self, nb_points: int = 32, latent_size: int = 16, hidden_size: int = 32,
                 nb_conv_layers: int = 2, kernel_size: int = 3, pooling: str = "mean",
                 coordinate_scale: float = 1.0) -> None:
        super().__init__(hidden_size, nb_conv_layers, kernel_size, pooling, coordinate_scale)
        if isinstance(nb_points, bool) or int(nb_points) < 2 or int(latent_size) < 1:
            raise ConfigError(f"StreamlineAutoEncoder: nb_points must be >= 2 and latent_size "
                              f">= 1, got {nb_points}, {latent_size}")
        self.nb_points = int(nb_points)
        self.to_latent = nn.Linear(self.encoder.out_features, int(latent_size))
        self.decoder = nn.Sequential(nn.Linear(int(latent_size), 4 * int(hidden_size)), nn.ReLU(),
                                     nn.Linear(4 * int(hidden_size), 3 * self.nb_points))
        self._config.update(nb_points=self.nb_points, latent_size=int(latent_size))

    def latent(self, points: Tensor, lengths: Tensor) -> Tensor:
        """``(N, latent_size)`` codes."""
        code: Tensor = self.to_latent(self.encode(points, lengths))
        return code

    def decode(self, code: Tensor) -> Tensor:
        """``(N, nb_points, 3)`` reconstructed coordinates (voxel space)."""
        return self.decoder(code).reshape(-1, self.nb_points, 3) * self.coordinate_scale

    def forward(self, points: Tensor, lengths: Tensor) -> Tensor:
        """Reconstruct ``(N, nb_points, 3)``."""
        return self.decode(self.latent(points, lengths))

    def _target(self, batch: Any) -> Tensor:
        if bool((batch.lengths != self.nb_points).any()):
            raise DataError(f"StreamlineAutoEncoder needs streamlines of nb_points="
                            f"{self.nb_points} points; give the batch loader nb_points="
                            f"{self.nb_points}")
        return torch.as_tensor(batch.points).reshape(-1, self.nb_points, 3)

    def compute_loss(self, batch: Any) -> Tensor:
        """Mean squared coordinate error, normalised by ``coordinate_scale ** 2``."""
        target = self._target(batch)
        error = (self(batch.points, batch.lengths) - target) / self.coordinate_scale
        return (error**2).mean()

    def compute_metrics(self, batch: Any) -> dict[str, Tensor]:
        """``{"loss", "point_distance"}`` (mean distance in voxels) from one forward pass."""
        target = self._target(batch)
        reconstruction = self(batch.points, batch.lengths)
        error = (reconstruction - target) / self.coordinate_scale
        return {"loss": (error**2).mean(),
                "point_distance": (reconstruction - target).norm(dim=-1).mean()}
