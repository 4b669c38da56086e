"""Logging of training runs: .npy histories, Comet.ml, TensorBoard and console progress."""

from dwi_mtl._lazy import lazy_exports

_EXPORTS = {
    "NpyHistory": "npy_history",
    "load_npy_logs": "npy_history",
    "LogSink": "sinks",
    "LogDispatcher": "sinks",
    "CometSink": "comet",
    "TensorBoardSink": "tensorboard",
    "ProgressReporter": "progress",
    "plot_training_curves": "plots",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
