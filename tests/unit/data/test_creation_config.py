"""Creation config parsing: defaults, JSON round trip, and errors naming the group."""

from __future__ import annotations

from pathlib import Path

import pytest

from dwi_mtl.data.creation_config import (
    StreamlineGroupConfig,
    VolumeGroupConfig,
    config_to_json,
    load_config,
)
from dwi_mtl.errors import ConfigError


def test_parse_defaults_and_round_trip(tmp_path: Path) -> None:
    config = {"dwi": {"type": "volume", "files": "dwi.nii.gz", "std_mask": ["m1", "m2"]},
              "lines": {"type": "streamlines", "files": ["*.trk"], "file_label": "bundle"}}
    groups = load_config(config)
    assert groups["dwi"] == VolumeGroupConfig("dwi", ("dwi.nii.gz",), "none", ("m1", "m2"))
    assert groups["lines"] == StreamlineGroupConfig("lines", ("*.trk",), None, (), "bundle")
    assert load_config(config_to_json(groups)) == groups
    path = tmp_path / "c.json"
    path.write_text('{"v": {"type": "volume", "files": ["a.nii"], "standardization": "all"}}')
    assert load_config(path)["v"].standardization == "all"  # type: ignore[union-attr]


@pytest.mark.parametrize(("entry", "match"), [
    ("dwi.nii.gz", "expected an object"),
    ({"type": "volume", "files": []}, "'files' is empty"),
    ({"type": "volume", "files": [3]}, "'files' must be a file name or a list"),
    ({"type": "streamlines", "files": ["a.trk"], "standardization": "all"},
     r"unknown key\(s\) \['standardization'\]"),
    ({"type": "streamlines", "files": ["a.trk"], "reference": 1}, "'reference'"),
    ({"type": "streamlines", "files": ["a.trk"], "data_per_streamline": ["x"],
      "file_label": "x"}, "'file_label'"),
])
def test_errors_name_the_group(entry: object, match: str) -> None:
    with pytest.raises(ConfigError, match=f"group 'g': {match}"):
        load_config({"g": entry})


def test_bad_group_names() -> None:
    for name in ("a/b", "data_per_streamline"):
        with pytest.raises(ConfigError, match="invalid group name"):
            load_config({name: {"type": "volume", "files": ["a.nii"]}})
