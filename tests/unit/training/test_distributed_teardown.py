"""shutdown() releases the process group there, so no gloo thread outlives it.

A gloo process group kept alive past ``destroy_process_group`` (torch's ``group=group.WORLD``
default arguments, evaluated when ``torch.distributed.nn`` is imported after the group exists:
building a ``torch.optim`` optimizer does that) is destroyed during interpreter finalization,
where a gloo worker still dropping a tensor aborts the process now and then (SIGABRT,
"terminate called without an active exception"). These tests check the cause is gone: the
threads are joined inside ``shutdown()``.

Kept free of top-level ``torch.distributed.nn`` imports: the spawned ranks import this module.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from dwi_mtl.training.distributed import (
    GROUP_DEFAULT_MODULES,
    init_from_environment,
    release_group,
    shutdown,
)

TASKS = Path("/proc/self/task")
needs_proc = pytest.mark.skipif(not TASKS.is_dir(), reason="thread names are read from /proc")


def gloo_threads() -> list[str]:
    """Names of this process's gloo threads (workers ``pt_gloo*``, TCP loop ``gloo_tcp*``)."""
    names = []
    for task in TASKS.iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:  # the thread ended meanwhile
            continue
    return sorted(n for n in names if n.startswith(("pt_gloo", "gloo")))


@pytest.fixture
def late_import_group() -> object:
    """A 1-rank gloo group captured by ``torch.distributed.nn``'s defaults, as after a late import.

    The module is reloaded while the group exists (in this test process it may already have
    been imported) and reloaded again afterwards, when no group exists, to leave it clean.
    """
    import torch.distributed.nn.functional as functional

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    dist.all_reduce(torch.ones(3))  # the worker threads run
    try:
        importlib.reload(functional)
        yield functional
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        importlib.reload(functional)


@needs_proc
def test_shutdown_joins_gloo_threads_despite_late_group_defaults(
    late_import_group: object, caplog: pytest.LogCaptureFixture,
) -> None:
    functional = late_import_group
    group = dist.group.WORLD
    assert any(d is group for d in functional.all_reduce.__defaults__)  # type: ignore[attr-defined]
    assert gloo_threads()
    del group

    with caplog.at_level(logging.WARNING, logger="dwi_mtl.training.distributed"):
        shutdown()

    assert not dist.is_initialized()
    assert functional.all_reduce.__defaults__[-1] is None  # type: ignore[attr-defined]
    assert gloo_threads() == []  # joined inside shutdown(), not at interpreter exit
    assert caplog.records == []


def test_a_reference_it_cannot_drop_is_counted_and_named_in_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    group = object()
    kept = [group, group]  # e.g. user code holding dist.group.WORLD
    with caplog.at_level(logging.WARNING, logger="dwi_mtl.training.distributed"):
        assert release_group(group) == 2
    assert "still referenced 2 time(s)" in caplog.text and "Troubleshooting" in caplog.text
    kept.clear()
    caplog.clear()
    assert release_group(group) == 0
    assert caplog.records == []


def test_release_resets_only_the_destroyed_group_in_torch_defaults() -> None:
    import torch.distributed.nn.functional as functional

    stale, other = object(), object()
    original = functional.broadcast.__defaults__
    try:
        functional.broadcast.__defaults__ = (stale,)
        functional.gather.__defaults__, gather = (0, other), functional.gather.__defaults__
        release_group(stale)
        assert functional.broadcast.__defaults__ == (None,)
        assert functional.gather.__defaults__ == (0, other)  # another object: untouched
    finally:
        functional.broadcast.__defaults__ = original
        functional.gather.__defaults__ = gather


def _rank(rank: int, port: int, out: str) -> None:
    """A torchrun-like rank: our init, then an optimizer (imports torch._dynamo), shutdown."""
    import sys

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    late = [name for name in GROUP_DEFAULT_MODULES if name in sys.modules]
    context = init_from_environment(backend="gloo")
    assert context is not None
    model = torch.nn.Linear(3, 2)
    context.broadcast_module_(model)
    torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    context.average_gradients_(list(model.parameters()))
    defaults = torch.distributed.nn.functional.all_reduce.__defaults__ or ()
    shutdown()
    Path(out, f"rank{rank}.json").write_text(json.dumps({
        "imported_before_init": late, "group_default": repr(defaults[-1]),
        "gloo_threads_after_shutdown": gloo_threads(),
    }))


@needs_proc
@pytest.mark.distributed
def test_two_ranks_leave_no_gloo_thread_after_shutdown(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    from tests.integration.test_ddp_workers import free_port

    mp.spawn(_rank, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert report["imported_before_init"] == []  # a fresh process, like a torchrun rank
        assert report["group_default"] == "None"  # imported before the group existed
        assert report["gloo_threads_after_shutdown"] == []
