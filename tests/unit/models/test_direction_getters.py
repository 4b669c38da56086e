"""Direction-getter heads: losses minimal at the true direction, exact angular error, EOS."""

from __future__ import annotations

import math

import pytest
import torch

from dwi_mtl.errors import ConfigError, DataError
from dwi_mtl.models.direction_getters import (
    DIRECTION_GETTERS,
    angle_degrees,
    get_direction_getter,
)

ANGLES = [0.0, 5.0, 30.0, 90.0, 135.0, 180.0]


def rotated(angle: float) -> torch.Tensor:
    """The x axis rotated by ``angle`` degrees about z."""
    rad = math.radians(angle)
    return torch.tensor([[math.cos(rad), math.sin(rad), 0.0]])


def outputs_for(head, direction: torch.Tensor) -> torch.Tensor:
    """Head outputs whose most likely direction is ``direction`` (confident)."""
    unit = torch.nn.functional.normalize(direction, dim=-1)
    if head.name == "sphere":
        logits = 20.0 * unit @ head.vertices.T
    elif head.name == "gaussian":
        logits = torch.cat([unit, torch.full((1, 3), -2.0)], dim=1)
    elif head.name == "fisher_von_mises":
        logits = torch.cat([unit, torch.full((1, 1), 20.0)], dim=1)
    else:
        logits = unit
    if head.eos:
        logits = torch.cat([logits, torch.full((1, 1), -5.0)], dim=1)
    return logits


@pytest.mark.parametrize("name", sorted(DIRECTION_GETTERS))
@pytest.mark.parametrize("eos", [False, True])
def test_loss_is_minimal_at_the_true_direction(name: str, eos: bool) -> None:
    head = get_direction_getter(name, 8, eos=eos)
    target = rotated(17.0)
    best = head.point_losses(outputs_for(head, target), target)
    for angle in (12.0, 30.0, 60.0, 120.0, 180.0):
        other = head.point_losses(outputs_for(head, rotated(17.0 + angle)), target)
        assert float(best) < float(other), (name, angle)


@pytest.mark.parametrize("name", sorted(DIRECTION_GETTERS))
def test_angular_error_is_exact_on_known_angles(name: str) -> None:
    head = get_direction_getter(name, 8)
    if name == "sphere":
        vertex = head.vertices[5:6]
        axis = torch.nn.functional.normalize(torch.linalg.cross(vertex, torch.tensor(
            [[0.0, 0.0, 1.0]])), dim=-1)
        for angle in ANGLES:
            rad = math.radians(angle)
            ortho = torch.linalg.cross(axis, vertex)  # perpendicular to vertex, in its plane
            target = math.cos(rad) * vertex + math.sin(rad) * ortho
            error = head.angular_error(outputs_for(head, vertex), target)
            assert float(error) == pytest.approx(angle, abs=1e-3)
        return
    for angle in ANGLES:
        error = head.angular_error(outputs_for(head, rotated(0.0)), 3.0 * rotated(angle))
        assert float(error) == pytest.approx(angle, abs=1e-3)


def test_angle_degrees_small_angles_are_precise() -> None:
    a = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[math.cos(1e-4), math.sin(1e-4), 0.0]], dtype=torch.float64)
    assert float(angle_degrees(a, b)) == pytest.approx(math.degrees(1e-4), rel=1e-6)


@pytest.mark.parametrize("name", sorted(DIRECTION_GETTERS))
def test_losses_with_eos_split_direction_and_end(name: str) -> None:
    head = get_direction_getter(name, 4, eos=True)
    hidden = torch.randn(7, 4)
    is_last = torch.tensor([False, False, True, False, False, False, True])
    targets = torch.randn(5, 3)
    losses = head.losses(head(hidden), targets, is_last)
    assert set(losses) == {"direction", "eos"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert head.layer.weight.grad is not None
    probability = head.stop_probability(head(hidden))
    assert probability is not None and bool(((probability > 0) & (probability < 1)).all())


def test_eos_is_learnt_where_streamlines_end() -> None:
    head = get_direction_getter("cosine", 2, eos=True)
    hidden = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    is_last = torch.tensor([False, True])
    optimizer = torch.optim.Adam(head.parameters(), lr=0.1)
    for _ in range(100):
        optimizer.zero_grad()
        sum(head.losses(head(hidden), torch.tensor([[1.0, 0.0, 0.0]]), is_last).values()).backward()
        optimizer.step()
    stop = head.stop_probability(head(hidden).detach())
    assert stop is not None and float(stop[0]) < 0.1 < 0.9 < float(stop[1])


@pytest.mark.parametrize("name", ["sphere", "gaussian", "fisher_von_mises"])
def test_sampling_is_reproducible_and_centred(name: str) -> None:
    head = get_direction_getter(name, 4)
    outputs = outputs_for(head, rotated(40.0)).repeat(500, 1)
    draws = [head.directions(outputs, sample=True, generator=torch.Generator().manual_seed(3))
             for _ in range(2)]
    torch.testing.assert_close(draws[0], draws[1])
    assert torch.allclose(draws[0].norm(dim=1), torch.ones(500), atol=1e-5)
    mean = torch.nn.functional.normalize(draws[0].mean(0, keepdim=True), dim=-1)
    assert float(angle_degrees(mean, rotated(40.0))) < 5.0


def test_fisher_von_mises_nll_is_a_normalised_density() -> None:
    head = get_direction_getter("fisher_von_mises", 4)
    generator = torch.Generator().manual_seed(0)
    points = torch.nn.functional.normalize(torch.randn(200_000, 3, generator=generator), dim=-1)
    outputs = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(points.shape[0], 1)
    density = torch.exp(-head.point_losses(outputs, points))
    assert float(density.mean() * 4 * math.pi) == pytest.approx(1.0, abs=0.02)


def test_bad_arguments_and_targets_raise() -> None:
    with pytest.raises(ConfigError, match="direction_getter"):
        get_direction_getter("unknown", 4)
    with pytest.raises(ConfigError, match="in_features"):
        get_direction_getter("cosine", 0)
    with pytest.raises(ConfigError, match="sphere"):
        get_direction_getter("sphere", 4, sphere="not_a_sphere")
    with pytest.raises(ConfigError, match="direction_getter 'l2'"):
        get_direction_getter("l2", 4, wrong=1)
    head = get_direction_getter("cosine", 4)
    with pytest.raises(DataError, match="target directions"):
        head.losses(torch.randn(4, 3), torch.randn(2, 3), torch.tensor([False, False, False,
                                                                         True]))
