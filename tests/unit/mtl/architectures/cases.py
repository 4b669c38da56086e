"""Shared builders for the architecture tests: tiny encoders, inputs and decoders."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dwi_mtl.models.streamline_encoders import PackedStreamlines, StreamlineEncoder
from dwi_mtl.mtl.architectures import get_architecture

TASKS = ["a", "b"]
OUT = {"a": 2, "b": 3}
WIDTH = 8
KWARGS = {
    "hps": {},
    "cross_stitch": {},
    "mmoe": {"num_experts": 2},
    "mtan": {},
    "cgc": {"num_experts": [1, 1]},
    "ple": {"num_experts": [1, 1]},
    "dselect_k": {"num_experts": 3, "num_nonzeros": 2},
}
SINGLE_INPUT_ONLY = {"cross_stitch", "ple"}
ENCODERS = ["mlp", "streamline"]
#: (architecture, encoder, multi_input) for every allowed combination.
CASES = [
    (name, encoder, multi)
    for name in KWARGS
    for encoder in ENCODERS
    for multi in (False, True)
    if not (multi and name in SINGLE_INPUT_ONLY)
]


def case_id(case: tuple[str, str, bool]) -> str:
    """Readable test id."""
    return f"{case[0]}-{case[1]}-{'multi' if case[2] else 'single'}"


def mlp_encoder() -> nn.Module:
    """A small MLP encoder: 6 features -> 8."""
    return nn.Sequential(nn.Linear(6, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH), nn.Tanh())


def streamline_encoder() -> nn.Module:
    """A small streamline encoder over the points' coordinates."""
    return StreamlineEncoder(in_features=3, hidden_size=WIDTH, nb_conv_layers=1)


def make_inputs(encoder: str, seed: int) -> Tensor | PackedStreamlines:
    """Inputs for ``encoder``: a (5, 6) tensor, or 4 packed streamlines of 3-6 points."""
    gen = torch.Generator().manual_seed(seed)
    if encoder == "mlp":
        return torch.randn(5, 6, generator=gen)
    lengths = torch.randint(3, 7, (4,), generator=gen)
    return PackedStreamlines(torch.randn(int(lengths.sum()), 3, generator=gen), lengths)


def batch_size(inputs: Tensor | PackedStreamlines) -> int:
    """Rows of the predictions for ``inputs``."""
    return inputs.shape[0] if isinstance(inputs, Tensor) else int(inputs.lengths.shape[0])


def build(
    name: str, encoder: str, multi_input: bool = False, rep_grad: bool = False, seed: int = 0, **kw
) -> nn.Module:
    """Build architecture ``name`` over ``encoder`` with two linear decoders."""
    torch.manual_seed(seed)
    decoders = {t: nn.Linear(WIDTH, n) for t, n in OUT.items()}
    factory = mlp_encoder if encoder == "mlp" else streamline_encoder
    cls = get_architecture(name)
    return cls(TASKS, factory, decoders, rep_grad, multi_input, "cpu", **{**KWARGS[name], **kw})


def task_losses(model: nn.Module, encoder: str, multi_input: bool, seed: int = 1) -> dict:
    """Forward (per task with multi_input) and return ``{task: scalar loss}``."""
    if multi_input:
        preds = {}
        for index, task in enumerate(TASKS):
            preds.update(model(make_inputs(encoder, seed + index), task))
    else:
        preds = model(make_inputs(encoder, seed))
    return {t: (p - 0.5).square().mean() + p.mean() for t, p in preds.items()}
