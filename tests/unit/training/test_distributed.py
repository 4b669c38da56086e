"""Launcher environments (torchrun, SLURM) read by dwi_mtl.training.distributed."""

from __future__ import annotations

import pytest
import torch

from dwi_mtl.errors import ConfigError
from dwi_mtl.training.distributed import DistributedContext, DistributedEnv, shard_config


def test_torchrun_variables() -> None:
    env = DistributedEnv.from_environ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert env == DistributedEnv(3, 4, 1, "torchrun")


def test_slurm_variables_need_the_master_address() -> None:
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"}
    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        DistributedEnv.from_environ(slurm)
    env = DistributedEnv.from_environ({**slurm, "MASTER_ADDR": "node1", "MASTER_PORT": "29500"})
    assert env == DistributedEnv(5, 8, 1, "slurm")


def test_torchrun_wins_over_slurm_and_single_process_is_none() -> None:
    both = {"RANK": "0", "WORLD_SIZE": "2", "SLURM_PROCID": "7", "SLURM_NTASKS": "9"}
    assert DistributedEnv.from_environ(both).launcher == "torchrun"  # type: ignore[union-attr]
    assert DistributedEnv.from_environ({}) is None
    assert DistributedEnv.from_environ({"RANK": "0", "WORLD_SIZE": "1"}) is None
    assert DistributedEnv.from_environ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) is None


@pytest.mark.parametrize("environ, name", [
    ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": ""}, "LOCAL_RANK"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "rank 2"),
])
def test_bad_variables_are_named(environ: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        DistributedEnv.from_environ(environ)


def test_outside_torch_distributed() -> None:
    assert DistributedContext.current() is None
    assert DistributedContext.for_engine(object()) is None
    assert shard_config() == {"rank": 0, "world_size": 1}


def test_broadcast_refuses_lazy_parameters_and_copies_rank_0_weights() -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        context = DistributedContext(rank=0, world_size=1)
        with pytest.raises(ConfigError, match="lazy"):
            context.broadcast_module_(torch.nn.LazyLinear(3))
        module = torch.nn.Linear(4, 2)
        before = [p.detach().clone() for p in module.parameters()]
        context.broadcast_module_(module)
        assert all(torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))
    finally:
        dist.destroy_process_group()
