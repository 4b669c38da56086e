"""Train a direction model on a straight-fibre dataset, then track with dwi_mtl_track_from_model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from dwi_mtl.cli.track_from_model import main
from dwi_mtl.data import MultiSubjectDataset, create_hdf5_dataset
from dwi_mtl.demo.tracts_io import save_trk
from dwi_mtl.models import ModelTrainer, RecurrentDirectionModel
from dwi_mtl.tracking import load_trained_model, voxel_to_rasmm
from dwi_mtl.training import BatchLoader, BatchSampler

pytestmark = pytest.mark.integration

SHAPE = (16, 16, 8)
AFFINE = np.array([[2.0, 0, 0, -16], [0, 2.0, 0, -16], [0, 0, 2.0, 0], [0, 0, 0, 1]])


def fibre_subject(folder: Path) -> None:
    """Fibres along x where z < 4, along y where z >= 4; features = the fibre direction."""
    folder.mkdir(parents=True)
    volume = np.zeros((*SHAPE, 3), np.float32)
    volume[:, :, :4, 0] = 1.0
    volume[:, :, 4:, 1] = 1.0
    nib.save(nib.Nifti1Image(volume, AFFINE), str(folder / "fibres.nii.gz"))
    mask = np.zeros(SHAPE, np.uint8)
    mask[1:-1, 1:-1, :] = 1
    nib.save(nib.Nifti1Image(mask, AFFINE), str(folder / "mask.nii.gz"))
    lines = []
    for a in np.linspace(2.5, 13.5, 12):
        for z in (0.7, 1.5, 2.5, 3.3):
            lines.append(np.stack([np.linspace(1.5, 14.0, 26), np.full(26, a), np.full(26, z)], 1))
        for z in (4.7, 5.5, 6.5, 7.3):
            lines.append(np.stack([np.full(26, a), np.linspace(1.5, 14.0, 26), np.full(26, z)], 1))
    save_trk(folder / "tracts.trk", [voxel_to_rasmm(line, AFFINE) for line in lines], AFFINE,
             SHAPE)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fibres")
    for name in ("s1", "s2", "s3"):
        fibre_subject(root / "subjects" / name)
    config = {"fibres": {"type": "volume", "files": ["fibres.nii.gz"]},
              "mask": {"type": "volume", "files": ["mask.nii.gz"]},
              "streamlines": {"type": "streamlines", "files": ["tracts.trk"]}}
    hdf5 = create_hdf5_dataset(root / "subjects", config, root / "fibres.hdf5", ["s1"], ["s2"],
                               ["s3"], step_size=1.0)
    torch.manual_seed(0)
    dataset = MultiSubjectDataset(hdf5)
    sampler = BatchSampler(dataset, "streamlines", 32, seed=1)
    loader = BatchLoader(dataset, "streamlines", input_group="fibres", seed=1)
    model = RecurrentDirectionModel(3, hidden_size=16)
    trainer = ModelTrainer(model, root, "run", sampler, loader, learning_rates=0.02,
                           weight_decay=0.0, max_epochs=12, progress_bar=False, device="cpu")
    trainer.train_and_validate()
    return root, hdf5


def test_trained_model_reloads_and_tracks_straight_lines(trained, tmp_path: Path) -> None:
    root, _ = trained
    model, params = load_trained_model(root, "run")
    assert params["model"]["class"].endswith("RecurrentDirectionModel")
    logs = np.load(root / "run" / "logs" / "validation_angular_error_per_epoch.npy")
    assert logs[-1] < 5.0
    out = tmp_path / "tracked.trk"
    seeding = np.zeros(SHAPE, np.uint8)  # away from the x/y interface at z = 4
    seeding[2:-2, 2:-2, [1, 2, 5, 6]] = 1
    nib.save(nib.Nifti1Image(seeding, AFFINE), str(tmp_path / "seeding.nii.gz"))
    code = main([str(root), "run", str(out), "--seeding_mask", str(tmp_path / "seeding.nii.gz"),
                 "--tracking_group", "mask", "--tracking_threshold", "0.5",
                 "--step_size", "1.0", "--min_length", "6", "--max_angle", "30",
                 "--log_level", "WARNING"])
    assert code == 0
    tractogram = nib.streamlines.load(str(out))
    assert len(tractogram.streamlines) > 300
    np.testing.assert_allclose(tractogram.header["voxel_to_rasmm"], AFFINE)
    for line in tractogram.streamlines:
        steps = np.diff(line, axis=0)
        np.testing.assert_allclose(np.linalg.norm(steps, axis=1), 1.0, atol=1e-3)
        z = line[:, 2] / 2.0 + 0.5  # voxel coordinate (corner origin) of every point
        axis = 0 if z.mean() < 4 else 1
        assert np.abs(steps[:, axis]).min() > 0.95  # along the local fibre
        chord = (line[-1] - line[0]) / np.linalg.norm(line[-1] - line[0])
        offsets = (line - line[0]) - np.outer((line - line[0]) @ chord, chord)
        assert np.linalg.norm(offsets, axis=1).max() < 1.0  # straight: within 1 mm


def test_probabilistic_tck_from_points_and_errors(trained, tmp_path: Path) -> None:
    root, hdf5 = trained
    seeds = tmp_path / "seeds.txt"
    np.savetxt(seeds, voxel_to_rasmm(np.array([[3.2, 5.5, 1.5], [5.5, 3.2, 6.5]]), AFFINE))
    out = tmp_path / "tracked.tck"
    args = [str(root), "run", str(out), "--seeds", str(seeds), "--algo", "prob",
            "--hdf5_file", str(hdf5), "--subject", "s2", "--min_length", "2",
            "--log_level", "WARNING"]
    assert main(args) == 0
    assert len(nib.streamlines.load(str(out)).streamlines) == 2
    assert main(args) == 2  # exists without -f
    assert main([*args, "-f"]) == 0
    bad = tmp_path / "bad.trk"
    assert main([str(root), "run", str(bad), "--log_level", "ERROR"]) == 2  # no seeding
    assert main([str(root), "run", str(bad), "--seeding_group", "mask", "--subject", "nobody",
                 "--log_level", "ERROR"]) == 2
    assert main([str(root), "missing", str(bad), "--seeding_group", "mask",
                 "--log_level", "ERROR"]) == 2
    assert main([str(root), "run", str(tmp_path / "x.vtk"), "--seeding_group", "mask",
                 "--log_level", "ERROR"]) == 2
    assert not bad.exists()


def test_script_help_runs() -> None:
    script = Path(__file__).resolve().parents[2] / "scripts" / "track_from_model.py"
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0 and "--seeding_mask" in result.stdout
