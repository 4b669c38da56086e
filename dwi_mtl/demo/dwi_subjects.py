"""Real diffusion subjects from dipy's shipped data: SH features, FA and DTI tractography.

Sources (offline, inside the dipy package): ``small_64D`` (10x10x10, 64 directions at
b=1000 + one b0) and ``small_101D`` (6x10x10, 101 directions on many shells up to b=4100 + one
b0). To give every subject features of the same size whatever its acquisition, each voxel's
signal attenuation ``E = S / S0`` is mapped to b=1000 with the mono-exponential rule
``E ** (1000 / b)`` and fitted with dipy's real symmetric spherical-harmonic basis
(``descoteaux07``) of order 6: 28 coefficients per voxel. Streamlines are tracked with dipy:
DTI peaks, dipy's EuDX tracker (deterministic), FA > 0.1 stopping and seeding.

A left-right *mirrored* copy of a subject (voxel axis 0 reversed, gradient x components negated)
is a consistent acquisition of a mirrored brain: the demo uses mirrors as held-out subjects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np

from dwi_mtl.errors import DataError

#: Order of the spherical-harmonic fit (28 real symmetric coefficients).
SH_ORDER = 6
#: Reference b-value the signal of every shell is mapped to.
REFERENCE_B = 1000.0
B0_THRESHOLD = 50.0
FA_THRESHOLD = 0.1


@dataclass
class DwiSubject:
    """A diffusion subject: data (X, Y, Z, N), affine, b-values and unit b-vectors."""

    name: str
    data: np.ndarray
    affine: np.ndarray
    bvals: np.ndarray
    bvecs: np.ndarray


def load_dipy_subject(dipy_name: str, name: str) -> DwiSubject:
    """Load one of dipy's shipped DWI datasets (``small_64D``, ``small_101D``)."""
    from dipy.data import get_fnames
    from dipy.io import read_bvals_bvecs

    if dipy_name not in ("small_64D", "small_101D"):
        raise DataError(f"'{dipy_name}' is not one of the DWI sets shipped inside dipy")
    image_file, bval_file, bvec_file = get_fnames(name=dipy_name)
    image: Any = nib.load(str(image_file))
    bvals, bvecs = read_bvals_bvecs(str(bval_file), str(bvec_file))
    bvecs = np.nan_to_num(np.asarray(bvecs, dtype=np.float64))
    return DwiSubject(name, np.asarray(image.get_fdata(), dtype=np.float64),
                      np.asarray(image.affine, dtype=np.float64),
                      np.asarray(bvals, dtype=np.float64), bvecs)


def mirrored(subject: DwiSubject, name: str) -> DwiSubject:
    """Return the left-right mirror of ``subject`` (voxel axis 0 reversed, bvec x negated)."""
    bvecs = subject.bvecs.copy()
    bvecs[:, 0] *= -1.0
    return DwiSubject(name, subject.data[::-1].copy(), subject.affine.copy(),
                      subject.bvals.copy(), bvecs)


def brain_mask(subject: DwiSubject) -> np.ndarray:
    """Voxels with a positive mean b0 signal."""
    return subject.data[..., subject.bvals < B0_THRESHOLD].mean(axis=-1) > 0


def sh_features(subject: DwiSubject, sh_order: int = SH_ORDER) -> np.ndarray:
    """(X, Y, Z, 28) float32 SH coefficients of the attenuation mapped to b=1000."""
    from dipy.core.sphere import Sphere
    from dipy.reconst.shm import sf_to_sh

    is_b0 = subject.bvals < B0_THRESHOLD
    s0 = subject.data[..., is_b0].mean(axis=-1)
    safe_s0 = np.where(s0 > 0, s0, 1.0)[..., None]
    attenuation = np.clip(subject.data[..., ~is_b0] / safe_s0, 1e-6, 1.0)
    attenuation = attenuation ** (REFERENCE_B / subject.bvals[~is_b0])
    attenuation[s0 <= 0] = 0.0
    directions = subject.bvecs[~is_b0]
    sphere = Sphere(xyz=directions / np.linalg.norm(directions, axis=1, keepdims=True))
    coefficients = sf_to_sh(attenuation, sphere, sh_order_max=sh_order,
                            basis_type="descoteaux07", legacy=False, smooth=0.006)
    return np.asarray(coefficients, dtype=np.float32)


def fit_dti(subject: DwiSubject) -> tuple[Any, np.ndarray]:
    """Fit DTI; return ``(model, fa)`` with NaNs replaced by 0."""
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel, fractional_anisotropy

    gtab = gradient_table(subject.bvals, bvecs=subject.bvecs, b0_threshold=B0_THRESHOLD)
    model = TensorModel(gtab)
    fit = model.fit(subject.data, mask=brain_mask(subject))
    return model, np.nan_to_num(fractional_anisotropy(fit.evals)).astype(np.float32)


def track(subject: DwiSubject, seed_density: int = 2, step_size: float = 0.5,
          min_points: int = 10) -> list[np.ndarray]:
    """Deterministic DTI tractography (RAS mm) seeded in FA > 0.1; short streamlines dropped.

    DTI peaks (one per voxel) followed with dipy's EuDX tracker on one thread with a fixed
    random seed, so the same subject always gives the same streamlines.
    """
    from dipy.data import default_sphere
    from dipy.direction import peaks_from_model
    from dipy.tracking import utils
    from dipy.tracking.stopping_criterion import ThresholdStoppingCriterion
    from dipy.tracking.tracker import eudx_tracking

    model, fa = fit_dti(subject)
    mask = (fa > FA_THRESHOLD) & brain_mask(subject)
    peaks = peaks_from_model(model, subject.data, default_sphere, relative_peak_threshold=0.5,
                             min_separation_angle=25, mask=mask, npeaks=1, return_sh=False)
    seeds = utils.seeds_from_mask(mask, subject.affine, density=seed_density)
    stopping = ThresholdStoppingCriterion(fa, FA_THRESHOLD)
    tracker = eudx_tracking(seeds, stopping, subject.affine, pam=peaks, step_size=step_size,
                            nbr_threads=1, random_seed=1)
    return [np.asarray(s, dtype=np.float64) for s in tracker if len(s) >= min_points]
