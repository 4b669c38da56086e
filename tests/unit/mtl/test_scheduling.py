"""Task samplers: plans per configuration, determinism from (seed, epoch), rounds, state."""

from __future__ import annotations

from collections import Counter

import pytest

from dwi_mtl.errors import ConfigError
from dwi_mtl.mtl.scheduling import (
    ProportionalSampler,
    RoundRobinSampler,
    WeightedSampler,
    get_task_sampler,
    split_rounds,
)

SIZES = {"a": 5, "b": 2, "c": 3}


def test_round_robin_cycles_and_drops_exhausted_tasks() -> None:
    plan = RoundRobinSampler().plan(0, SIZES)
    assert plan == ["a", "b", "c", "a", "b", "c", "a", "c", "a", "a"]


def test_proportional_uses_every_batch_once_in_a_random_order_per_epoch() -> None:
    sampler = ProportionalSampler(seed=3)
    plan0, plan1 = sampler.plan(0, SIZES), sampler.plan(1, SIZES)
    assert Counter(plan0) == Counter(SIZES) == Counter(plan1)
    assert plan0 != plan1
    assert plan0 == ProportionalSampler(seed=3).plan(0, SIZES)
    assert plan0 != ProportionalSampler(seed=4).plan(0, SIZES)


def test_weighted_favours_heavy_tasks_and_respects_sizes_and_steps() -> None:
    sampler = WeightedSampler({"a": 100.0, "b": 1.0}, nb_steps=None, seed=0)
    plan = sampler.plan(0, {"a": 50, "b": 50})
    assert Counter(plan) == {"a": 50, "b": 50}
    assert Counter(plan[:20])["a"] >= 17  # heavy task first, while it has batches
    short = WeightedSampler({"a": 1.0, "b": 3.0}, nb_steps=4, seed=0).plan(0, SIZES)
    assert len(short) == 4 and set(short) <= set(SIZES)
    assert sampler.plan(2, {"a": 50, "b": 50}) == sampler.plan(2, {"a": 50, "b": 50})


def test_bad_sampler_arguments_raise_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown task sampler"):
        get_task_sampler("cyclic")
    with pytest.raises(ConfigError, match="> 0"):
        WeightedSampler({"a": 0.0})
    with pytest.raises(ConfigError, match="unknown tasks"):
        WeightedSampler({"z": 1.0}).plan(0, SIZES)
    with pytest.raises(ConfigError, match="rejects"):
        get_task_sampler("round_robin", weights={})


def test_state_dict_refuses_a_different_sampler_on_resume() -> None:
    sampler = get_task_sampler("proportional", seed=1)
    sampler.load_state_dict(ProportionalSampler(seed=1).state_dict())
    with pytest.raises(ConfigError, match="differs"):
        sampler.load_state_dict(ProportionalSampler(seed=2).state_dict())


def test_split_rounds_contain_every_task_and_merge_the_tail() -> None:
    plan = RoundRobinSampler().plan(0, {"a": 4, "b": 2})  # a b a b a a
    assert split_rounds(plan, ["a", "b"]) == [(0, 2), (2, 6)]
    assert split_rounds(["a", "a"], ["a", "b"]) == [(0, 2)]
    assert split_rounds([], ["a"]) == []
