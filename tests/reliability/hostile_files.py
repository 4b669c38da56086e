"""Hostile files: malformed HDF5 datasets given to ``train_model`` and broken tractograms given
to ``create_hdf5_dataset`` (see :mod:`tests.reliability.hostile`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from tests.reliability.hostile import Attempt, Context
from tests.unit.data.real_inputs import NIBABEL_DATA, small_25_config, write_json

S0, S1 = "subj-00", "subj-01"
SL, VOL = "streamlines", "input"


def _replace(group: Any, key: str, value: Any) -> None:
    del group[key]
    group[key] = value


def _mutations() -> dict[str, Callable[[h5py.File], None]]:
    """Name -> an in-place corruption of a valid dataset file (opened read-write)."""
    sl = f"{S0}/{SL}"
    vol = f"{S0}/{VOL}"

    def points(h5: h5py.File) -> int:
        return int(h5[sl]["data"].shape[0])

    return {
        "no_split_attributes": lambda h5: [h5.attrs.__delitem__(k) for k in
                                           ("training_subjs", "validation_subjs",
                                            "testing_subjs")],
        "split_lists_a_missing_subject": lambda h5: h5.attrs.__setitem__(
            "training_subjs", ["ghost"]),
        "subject_in_two_splits": lambda h5: h5.attrs.__setitem__("validation_subjs", [S0]),
        "split_attribute_is_a_number": lambda h5: h5.attrs.__setitem__("training_subjs", 7),
        "missing_streamline_group": lambda h5: h5[S0].__delitem__(SL),
        "missing_volume_group_in_one_subject": lambda h5: h5[S1].__delitem__(VOL),
        "group_without_type": lambda h5: h5[vol].attrs.__delitem__("type"),
        "group_of_unknown_type": lambda h5: h5[vol].attrs.__setitem__("type", "mesh"),
        "subject_is_a_dataset": lambda h5: (h5.__delitem__(S1), h5.create_dataset(S1, data=[1])),
        "volume_without_data": lambda h5: h5[vol].__delitem__("data"),
        "volume_2d": lambda h5: _replace(h5[vol], "data", np.zeros((4, 4), np.float32)),
        "volume_5d": lambda h5: _replace(h5[vol], "data", np.zeros((2, 2, 2, 2, 2), np.float32)),
        "volume_without_affine": lambda h5: h5[vol].attrs.__delitem__("affine"),
        "volume_affine_of_3_values": lambda h5: h5[vol].attrs.__setitem__("affine", [1., 2, 3]),
        "volume_of_strings": lambda h5: _replace(h5[vol], "data",
                                                 np.array([[[b"a", b"b"]]], dtype="S1")),
        "volume_features_differ_between_subjects": lambda h5: _replace(
            h5[f"{S1}/{VOL}"], "data", np.zeros((16, 16, 12, 2), np.float32)),
        "volume_data_is_a_group": lambda h5: (h5[vol].__delitem__("data"),
                                              h5[vol].create_group("data")),
        "streamlines_without_offsets": lambda h5: h5[sl].__delitem__("offsets"),
        "streamlines_without_lengths": lambda h5: h5[sl].__delitem__("lengths"),
        "streamlines_without_points": lambda h5: h5[sl].__delitem__("data"),
        "offsets_out_of_range": lambda h5: _replace(h5[sl], "offsets",
                                                    h5[sl]["offsets"][()] + points(h5)),
        "negative_offsets": lambda h5: _replace(h5[sl], "offsets", h5[sl]["offsets"][()] - 10**6),
        "more_offsets_than_lengths": lambda h5: _replace(
            h5[sl], "offsets", np.append(h5[sl]["offsets"][()], 0)),
        "lengths_do_not_sum_to_the_points": lambda h5: _replace(
            h5[sl], "lengths", h5[sl]["lengths"][()] * 3),
        "negative_lengths": lambda h5: _replace(h5[sl], "lengths", -h5[sl]["lengths"][()]),
        "float_offsets_with_nan": lambda h5: _replace(
            h5[sl], "offsets", np.full(h5[sl]["offsets"].shape, np.nan)),
        "points_of_2_coordinates": lambda h5: _replace(h5[sl], "data",
                                                       h5[sl]["data"][()][:, :2]),
        "points_1d": lambda h5: _replace(h5[sl], "data", h5[sl]["data"][()].reshape(-1)),
        "points_of_strings": lambda h5: _replace(h5[sl], "data",
                                                 np.full((points(h5), 3), b"x", dtype="S1")),
        "points_with_nan": lambda h5: _replace(h5[sl], "data",
                                               np.full((points(h5), 3), np.nan, np.float32)),
        "euclidean_lengths_of_wrong_count": lambda h5: _replace(
            h5[sl], "euclidean_lengths", np.ones(3, np.float32)),
        "label_of_wrong_count": lambda h5: _replace(
            h5[f"{sl}/data_per_streamline"], "label", np.zeros(2, np.int64)),
        "unknown_space": lambda h5: h5[sl].attrs.__setitem__("space", "Space.MNI"),
        "unknown_origin": lambda h5: h5[sl].attrs.__setitem__("origin", "Origin.MIDDLE"),
    }


def _hdf5_case(mutate: Callable[[h5py.File], None]) -> Callable[[Context], Attempt]:
    def case(ctx: Context) -> Attempt:
        bad = ctx.copy(ctx.inputs.hdf5, "bad.hdf5")
        with h5py.File(bad, "r+") as h5:
            mutate(h5)
        return Attempt("train_model", ctx.train_args(hdf5=bad), "bad.hdf5", [ctx.tmp / "run"])
    return case


def _raw_file_case(content: Callable[[Path], bytes]) -> Callable[[Context], Attempt]:
    def case(ctx: Context) -> Attempt:
        bad = ctx.tmp / "bad.hdf5"
        bad.write_bytes(content(ctx.inputs.hdf5))
        return Attempt("train_model", ctx.train_args(hdf5=bad), "bad.hdf5", [ctx.tmp / "run"])
    return case


def _tractogram_case(content: Callable[[], bytes], suffix: str = ".trk"
                     ) -> Callable[[Context], Attempt]:
    """Subject s1's tractogram replaced by ``content`` (named ``lines<suffix>``)."""
    def case(ctx: Context) -> Attempt:
        subjects = ctx.copy(ctx.inputs.subjects)
        (subjects / "s1" / "lines.trk").unlink()
        (subjects / "s1" / f"lines{suffix}").write_bytes(content())
        config = small_25_config()
        del config["tracts_tck"]
        config["tracts"]["files"] = [f"lines{suffix}"]
        if suffix != ".trk":
            del config["tracts"]["data_per_streamline"]
        path = write_json(ctx.tmp / "config.json", config)
        return Attempt("create_hdf5_dataset", ctx.create_args(subjects, path), f"lines{suffix}",
                       [ctx.tmp / "out.hdf5"])
    return case


def _nibabel(name: str) -> Callable[[], bytes]:
    return lambda: (NIBABEL_DATA / name).read_bytes()


def _truncated(name: str) -> Callable[[], bytes]:
    return lambda: (NIBABEL_DATA / name).read_bytes()[:1100]


FILE_CASES: dict[str, Callable[[Context], Attempt]] = {
    **{f"hdf5_{name}": _hdf5_case(mutate) for name, mutate in _mutations().items()},
    "hdf5_not_an_hdf5_file": _raw_file_case(lambda p: b"subject,streamlines\n1,2\n"),
    "hdf5_empty_file": _raw_file_case(lambda p: b""),
    "hdf5_truncated_file": _raw_file_case(lambda p: p.read_bytes()[: p.stat().st_size // 3]),
    "hdf5_missing_file": lambda ctx: Attempt(
        "train_model", ctx.train_args(hdf5=ctx.tmp / "none.hdf5"), "none.hdf5",
        [ctx.tmp / "run"]),
    "tract_tck_without_header_end": _tractogram_case(_nibabel("no_header_end.tck"), ".tck"),
    "tract_tck_without_header_end_at_eof": _tractogram_case(_nibabel("no_header_end_eof.tck"),
                                                            ".tck"),
    "tract_tck_without_magic_number": _tractogram_case(_nibabel("no_magic_number.tck"), ".tck"),
    "tract_tck_with_nan_points": _tractogram_case(_nibabel("matlab_nan.tck"), ".tck"),
    "tract_empty_tck_file": _tractogram_case(lambda: b"", ".tck"),
    "tract_empty_trk_file": _tractogram_case(lambda: b""),
    "tract_truncated_trk": _tractogram_case(_truncated("standard.trk")),
    "tract_random_bytes_trk": _tractogram_case(
        lambda: np.random.default_rng(0).bytes(4096)),
    "tract_unknown_extension": _tractogram_case(_nibabel("standard.trk"), ".vtk"),
    "tract_empty_tractogram": _tractogram_case(_nibabel("empty.trk")),
}

