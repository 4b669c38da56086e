"""Packaging for dwi_mtl: a resumable, multi-task PyTorch trainer for streaming data."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = "0.1.0"

INSTALL_REQUIRES = [
    # torch is not pinned: `pip install torch==2.13.0` first takes the CPU wheel on disk,
    # and any later torch >= 2.1 satisfies this range without a download.
    "torch>=2.1",
    "numpy>=1.24",
    "scipy>=1.10",
    "h5py>=3.8",
    "nibabel>=5.0",
    "dipy>=1.8",
    "comet-ml>=3.35",
    "tqdm>=4.60",
    "tensorboard>=2.12",
    "matplotlib>=3.7",
    "pyyaml>=6.0",
    # XXH3-64 checksums of checkpoint files (8x faster than CRC32; CRC32 is the fallback).
    "xxhash>=3.0",
]

EXTRAS = {
    "test": [
        "pytest>=7.4",
        "hypothesis>=6.80",
        "scikit-learn>=1.3",
        # TorchJD is the numerical reference of the weighting tests; its extras bring the
        # QP/conic solvers (quadprog, qpsolvers, cvxpy, ecos) its reference aggregators need.
        "torchjd[full]>=0.18,<0.19",
        "ruff>=0.5",
        "mypy>=1.8",
        # The docs are built (warnings as errors) and their code blocks executed by the tests.
        "sphinx>=7",
        "myst-parser>=2",
        # examples/mini_example.ipynb is executed by the test suite.
        "nbclient>=0.7",
        "nbformat>=5",
        "ipykernel>=6",
    ],
    "docs": ["sphinx>=7", "myst-parser>=2"],
    "trx": ["trx-python>=0.3"],
}

CONSOLE_SCRIPTS = [
    "dwi_mtl_create_hdf5_dataset=dwi_mtl.cli.create_hdf5_dataset:main",
    "dwi_mtl_train_model=dwi_mtl.cli.train_model:main",
    "dwi_mtl_resume_training_from_checkpoint=dwi_mtl.cli.resume_training:main",
    "dwi_mtl_demo=dwi_mtl.cli.demo:main",
    "dwi_mtl_track_from_model=dwi_mtl.cli.track_from_model:main",
    "dwi_mtl_visualize_logs=dwi_mtl.cli.visualize_logs:main",
    "dwi_mtl_upload_logs_to_comet=dwi_mtl.cli.upload_logs_to_comet:main",
]

setup(
    name="dwi_mtl",
    version=VERSION,
    description="Resumable multi-task PyTorch trainer for streaming data (diffusion MRI tractography).",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["dwi_mtl", "dwi_mtl.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": CONSOLE_SCRIPTS},
    include_package_data=True,
)
