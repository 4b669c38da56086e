"""Direction getters: the output heads that turn a per-point hidden state into a next direction.

A tractography model reads the signal around every point of a streamline and predicts the
direction of the next step. The head decides *how* that direction is represented and learnt:

======================  ===========================  =========================================
name                    output per point             loss
======================  ===========================  =========================================
``"cosine"``            a 3D vector                  ``1 - cos(prediction, target)``
``"l2"``                a 3D vector                  ``|prediction - target|^2`` (unit target)
``"sphere"``            logits over sphere vertices  cross-entropy with the nearest vertex
``"gaussian"``          mean (3) + log sigma (3)     negative log-likelihood of the target
``"fisher_von_mises"``  mean direction + kappa       negative log-likelihood on the sphere
======================  ===========================  =========================================

Every head can also learn the **end of the streamline** (``eos=True``): the sphere
classifier gets one extra class, the other heads one extra logit (binary cross-entropy). The
targets follow the batch pipeline's packing: ``directions`` holds one vector per point except
the last of each streamline (``is_last``), where the end-of-streamline target is 1.

:meth:`DirectionGetter.angular_error` is the metric of every head: the angle in degrees
between the head's deterministic direction and the target.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from dwi_mtl.errors import ConfigError, DataError

_LOG_4PI = math.log(4.0 * math.pi)


def angle_degrees(a: Tensor, b: Tensor) -> Tensor:
    """Angle in degrees between the rows of ``a`` and ``b`` (``(Q, 3)``; any non-zero norm).

    Uses ``atan2(|a x b|, a . b)``, exact to float precision at small and large angles.
    """
    cross = torch.linalg.cross(a, b, dim=-1).norm(dim=-1)
    dot = (a * b).sum(dim=-1)
    return torch.rad2deg(torch.atan2(cross, dot))


class DirectionGetter(nn.Module):
    """Base class of the heads: one linear layer from the hidden state to the head's outputs.

    Args:
        in_features: width of the hidden state.
        eos: also learn the end of the streamline.
        dropout: dropout applied to the hidden state before the layer.
    """

    name: ClassVar[str] = ""
    #: Outputs describing the direction (the end-of-streamline logit excluded).
    nb_direction_outputs: ClassVar[int] = 3

    def __init__(self, in_features: int, eos: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        if isinstance(in_features, bool) or int(in_features) < 1:
            raise ConfigError(f"{type(self).__name__}: in_features must be >= 1, got {in_features}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ConfigError(f"{type(self).__name__}: dropout must be in [0, 1), got {dropout}")
        self.in_features, self.eos = int(in_features), bool(eos)
        self.dropout = nn.Dropout(float(dropout))
        self.layer = nn.Linear(self.in_features, self.nb_outputs)
        self._config: dict[str, Any] = {"in_features": self.in_features, "eos": self.eos,
                                        "dropout": float(dropout)}

    @property
    def nb_outputs(self) -> int:
        """Width of :meth:`forward`'s output."""
        return self.nb_direction_outputs + (1 if self.eos else 0)

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-able)."""
        return dict(self._config)

    def forward(self, hidden: Tensor) -> Tensor:
        """``(Q, in_features)`` hidden states -> ``(Q, nb_outputs)`` raw outputs."""
        return self.layer(self.dropout(hidden))

    # -- to implement -----------------------------------------------------------------------
    def point_losses(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Per-point direction loss ``(Q,)`` of outputs at points that have a next step."""
        raise NotImplementedError

    def directions(self, outputs: Tensor, sample: bool = False,
                   generator: torch.Generator | None = None) -> Tensor:
        """``(Q, 3)`` unit directions: the most likely one, or one drawn (``sample=True``)."""
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------------------
    def eos_logits(self, outputs: Tensor) -> Tensor | None:
        """``(Q,)`` end-of-streamline logits, None without ``eos``."""
        return outputs[:, -1] if self.eos else None

    def stop_probability(self, outputs: Tensor) -> Tensor | None:
        """``(Q,)`` probability that the streamline ends here, None without ``eos``."""
        logits = self.eos_logits(outputs)
        return None if logits is None else torch.sigmoid(logits)

    def losses(self, outputs: Tensor, targets: Tensor, is_last: Tensor) -> dict[str, Tensor]:
        """Mean losses of a packed batch.

        Args:
            outputs: ``(P, nb_outputs)`` for every point.
            targets: ``(P - N, 3)`` next-step vectors of the points that are not last.
            is_last: ``(P,)`` bool, True at the last point of each streamline.

        Returns:
            ``{"direction": ...}`` plus ``{"eos": ...}`` when the head learns the end.
        """
        inner = outputs[~is_last]
        if inner.shape[0] != targets.shape[0]:
            raise DataError(f"{type(self).__name__}: {inner.shape[0]} points have a next step but "
                            f"{targets.shape[0]} target directions were given")
        result = {"direction": self.point_losses(inner, targets).mean()}
        if self.eos:
            logits = outputs[:, -1]
            result["eos"] = nn.functional.binary_cross_entropy_with_logits(
                logits, is_last.to(logits.dtype))
        return result

    def angular_error(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """``(Q,)`` degrees between the deterministic directions and ``targets``."""
        return angle_degrees(self.directions(outputs), targets)


class CosineRegression(DirectionGetter):
    """Regress a vector; loss ``1 - cos`` (insensitive to the norm of the prediction)."""

    name = "cosine"

    def point_losses(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """``1 - cos(prediction, target)``."""
        cosine = nn.functional.cosine_similarity(outputs[:, :3], targets, dim=-1, eps=1e-8)
        return 1.0 - cosine

    def directions(self, outputs: Tensor, sample: bool = False,
                   generator: torch.Generator | None = None) -> Tensor:
        """The normalised prediction (regression heads have nothing to sample)."""
        return nn.functional.normalize(outputs[:, :3], dim=-1)


class L2Regression(CosineRegression):
    """Regress the unit target vector; loss the squared Euclidean distance."""

    name = "l2"

    def point_losses(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """``|prediction - unit target|^2``."""
        unit = nn.functional.normalize(targets, dim=-1)
        return ((outputs[:, :3] - unit) ** 2).sum(dim=-1)


class SphereClassification(DirectionGetter):
    """Classify the direction among the vertices of a dipy sphere (+ an end-of-streamline class).

    Args:
        in_features: width of the hidden state.
        eos: add a last class meaning "the streamline ends here".
        dropout: dropout on the hidden state.
        sphere: a dipy sphere name shipped with dipy (default ``"repulsion724"``: 724
            directions about 8 degrees apart).
    """

    name = "sphere"
    vertices: Tensor

    def __init__(self, in_features: int, eos: bool = False, dropout: float = 0.0,
                 sphere: str = "repulsion724") -> None:
        from dipy.data import get_sphere

        try:
            vertices = get_sphere(name=sphere).vertices
        except Exception as exc:  # dipy raises DataError/ValueError/KeyError by version
            raise ConfigError(f"SphereClassification: unknown sphere {sphere!r}: {exc}") from exc
        self._nb_classes = int(vertices.shape[0])
        super().__init__(in_features, eos, dropout)
        self.register_buffer("vertices", torch.as_tensor(vertices, dtype=torch.float32))
        self._config["sphere"] = sphere

    @property
    def nb_outputs(self) -> int:
        """One logit per vertex, plus the end-of-streamline class."""
        return self._nb_classes + (1 if self.eos else 0)

    def eos_logits(self, outputs: Tensor) -> Tensor | None:
        """Log-odds of the end class against all direction classes."""
        if not self.eos:
            return None
        return outputs[:, -1] - torch.logsumexp(outputs[:, :-1], dim=-1)

    def target_classes(self, targets: Tensor) -> Tensor:
        """``(Q,)`` index of the vertex closest to each target direction."""
        return (nn.functional.normalize(targets, dim=-1) @ self.vertices.T).argmax(dim=-1)

    def point_losses(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Cross-entropy with the nearest vertex (over all classes, end class included)."""
        return nn.functional.cross_entropy(outputs, self.target_classes(targets), reduction="none")

    def losses(self, outputs: Tensor, targets: Tensor, is_last: Tensor) -> dict[str, Tensor]:
        """Direction cross-entropy at inner points; with ``eos``, the end class at last points."""
        if not self.eos:
            return super().losses(outputs, targets, is_last)
        inner = outputs[~is_last]
        if inner.shape[0] != targets.shape[0]:
            raise DataError(f"SphereClassification: {inner.shape[0]} points have a next step "
                            f"but {targets.shape[0]} target directions were given")
        last = outputs[is_last]
        end = torch.full((last.shape[0],), self._nb_classes, dtype=torch.long,
                         device=outputs.device)
        return {"direction": self.point_losses(inner, targets).mean(),
                "eos": nn.functional.cross_entropy(last, end)}

    def directions(self, outputs: Tensor, sample: bool = False,
                   generator: torch.Generator | None = None) -> Tensor:
        """The most likely vertex, or a vertex drawn from the softmax (end class excluded)."""
        logits = outputs[:, : self._nb_classes]
        if sample:
            index = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)[:, 0]
        else:
            index = logits.argmax(dim=-1)
        return self.vertices[index]


class GaussianLikelihood(DirectionGetter):
    """A 3D Gaussian over the next direction (mean and per-axis log sigma); loss its NLL."""

    name = "gaussian"
    nb_direction_outputs = 6

    def _split(self, outputs: Tensor) -> tuple[Tensor, Tensor]:
        return outputs[:, :3], outputs[:, 3:6].clamp(-7.0, 5.0)

    def point_losses(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Negative log-likelihood of the unit target under ``N(mean, diag(sigma^2))``."""
        mean, log_sigma = self._split(outputs)
        unit = nn.functional.normalize(targets, dim=-1)
        z = (unit - mean) * torch.exp(-log_sigma)
        return 0.5 * (z**2).sum(dim=-1) + log_sigma.sum(dim=-1) + 1.5 * math.log(2 * math.pi)

    def directions(self, outputs: Tensor, sample: bool = False,
                   generator: torch.Generator | None = None) -> Tensor:
        """The normalised mean, or a normalised draw from the Gaussian."""
        mean, log_sigma = self._split(outputs)
        if sample:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device,
                                dtype=mean.dtype)
            mean = mean + noise * torch.exp(log_sigma)
        return nn.functional.normalize(mean, dim=-1)


class FisherVonMises(DirectionGetter):
    """A von Mises-Fisher distribution on the sphere (mean direction, concentration kappa)."""

    name = "fisher_von_mises"
    nb_direction_outputs = 4

    def _split(self, outputs: Tensor) -> tuple[Tensor, Tensor]:
        mu = nn.functional.normalize(outputs[:, :3], dim=-1)
        kappa = nn.functional.softplus(outputs[:, 3]) + 1e-3
        return mu, kappa

    def point_losses(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """``-log C3(kappa) - kappa mu . x`` with ``C3 = kappa / (4 pi sinh kappa)``."""
        mu, kappa = self._split(outputs)
        unit = nn.functional.normalize(targets, dim=-1)
        # log sinh k = k + log(1 - exp(-2k)) - log 2, stable for large k
        log_sinh = kappa + torch.log(-torch.expm1(-2.0 * kappa)) - math.log(2.0)
        log_c3 = torch.log(kappa) - _LOG_4PI - log_sinh
        return -log_c3 - kappa * (mu * unit).sum(dim=-1)

    def directions(self, outputs: Tensor, sample: bool = False,
                   generator: torch.Generator | None = None) -> Tensor:
        """The mean direction, or a draw from the distribution (Wood's closed form in 3D)."""
        mu, kappa = self._split(outputs)
        if not sample:
            return mu
        shape = (mu.shape[0],)
        u = torch.rand(shape, generator=generator, device=mu.device, dtype=mu.dtype)
        w = 1.0 + torch.log(u + (1.0 - u) * torch.exp(-2.0 * kappa)) / kappa
        w = w.clamp(-1.0, 1.0)
        noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        tangent = nn.functional.normalize(noise - (noise * mu).sum(-1, keepdim=True) * mu, dim=-1)
        return w[:, None] * mu + torch.sqrt(1.0 - w**2)[:, None] * tangent


DIRECTION_GETTERS: dict[str, type[DirectionGetter]] = {
    cls.name: cls for cls in (CosineRegression, L2Regression, SphereClassification,
                              GaussianLikelihood, FisherVonMises)
}


def get_direction_getter(name: str, in_features: int, **kwargs: Any) -> DirectionGetter:
    """Build a head by name (see :data:`DIRECTION_GETTERS`).

    Raises:
        ConfigError: naming ``direction_getter`` for an unknown name or bad arguments.
    """
    if name not in DIRECTION_GETTERS:
        raise ConfigError(f"direction_getter must be one of {sorted(DIRECTION_GETTERS)}, "
                          f"got {name!r}")
    try:
        return DIRECTION_GETTERS[name](in_features, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"direction_getter {name!r}: {exc}") from exc
