"""Logging of training runs: .npy histories, Comet.ml, TensorBoard and console progress."""
