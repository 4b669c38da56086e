"""dwi_mtl: a resumable, multi-task PyTorch trainer for streaming data.

Subpackages: :mod:`dwi_mtl.data` (HDF5 creation and datasets), :mod:`dwi_mtl.training`
(batch sampler/loader, trainers, checkpoints, policies), :mod:`dwi_mtl.logging` (.npy, Comet,
TensorBoard, progress), :mod:`dwi_mtl.mtl` (architectures, weightings, MTLTrainer),
:mod:`dwi_mtl.models` (reference models) and :mod:`dwi_mtl.demo` (embedded demo data).
Importing the top-level package is cheap: subpackages load their heavy dependencies lazily.
"""

__version__ = "0.1.0"
