"""dwi_mtl.training.faults: parsing DWI_MTL_FAULT, counting hits, acting at the chosen hit."""

from __future__ import annotations

import errno

import pytest

from dwi_mtl.errors import ConfigError
from dwi_mtl.training import faults


@pytest.fixture(autouse=True)
def _disarm():
    yield
    faults.arm("")


def test_disarmed_points_do_nothing():
    faults.arm("")
    for point in faults.FAULT_POINTS:
        faults.fault_point(point)
    assert faults.hit_counts() == {}


def test_the_chosen_hit_of_the_chosen_point_acts():
    faults.arm("npy.file_replaced:3:eio, *:100")
    faults.fault_point("npy.file_replaced")
    faults.fault_point("checkpoint.renamed")
    faults.fault_point("npy.file_replaced")
    with pytest.raises(OSError) as info:
        faults.fault_point("npy.file_replaced")
    assert info.value.errno == errno.EIO
    assert faults.hit_counts() == {"npy.file_replaced": 3, "*": 4}


@pytest.mark.parametrize(("text", "match"), [
    ("checkpoint.renamed", "point:hit"),
    ("nowhere:1", "unknown point 'nowhere'"),
    ("checkpoint.renamed:0", "positive integer"),
    ("checkpoint.renamed:x", "positive integer"),
    ("checkpoint.renamed:1:explode", "unknown action 'explode'"),
])
def test_bad_specifications_name_the_variable(text, match):
    with pytest.raises(ConfigError, match=match) as info:
        faults.parse_faults(text)
    assert faults.FAULT_ENV in str(info.value)
