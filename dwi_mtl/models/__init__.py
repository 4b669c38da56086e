"""Reference models for tractography: direction getters, streamline encoders."""

from dwi_mtl._lazy import lazy_exports

_EXPORTS = {
    "PackedStreamlines": "streamline_encoders",
    "StreamlineEncoder": "streamline_encoders",
    "RecurrentTracker": "recurrent_tracker",
    "DirectionGetter": "direction_getters",
    "CosineRegression": "direction_getters",
    "L2Regression": "direction_getters",
    "SphereClassification": "direction_getters",
    "GaussianLikelihood": "direction_getters",
    "FisherVonMises": "direction_getters",
    "get_direction_getter": "direction_getters",
    "DirectionModel": "direction_model",
    "RecurrentDirectionModel": "recurrent_model",
    "TransformerDirectionModel": "transformer_model",
    "BundleClassifier": "streamline_models",
    "StreamlineAutoEncoder": "streamline_models",
    "ModelTrainer": "model_trainer",
    "MTLTracker": "mtl_tracker",
    "CausalSequenceEncoder": "sequence_encoder",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
