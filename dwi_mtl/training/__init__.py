"""Training: batch sampler and loader, DataLoader builder, trainers, checkpoints, policies."""

from dwi_mtl._lazy import lazy_exports

_EXPORTS = {
    "BatchSampler": "batch_sampler",
    "BatchLoader": "batch_loader",
    "BatchItem": "batch",
    "StreamlineBatch": "batch",
    "build_dataloader": "dataloaders",
    "AbstractTrainer": "trainer",
    "ReferenceTrainer": "reference_trainer",
    "TrainingEngine": "loop",
    "MemoryBatchSource": "batch_sources",
    "SamplerLoaderSource": "batch_sources",
    "CheckpointManager": "checkpoint",
    "ExperimentFolder": "experiment",
    "CheckpointedOnSignal": "signals",
    "EXIT_CHECKPOINTED_ON_SIGNAL": "signals",
    "train_model": "functional",
    "TorchModel": "torch_model",
    "Policy": "policies",
    "ValuePolicy": "policies",
    "EarlyStopping": "policies",
    "Exponential": "value_policies",
    "Multiply": "value_policies",
    "Schedule": "value_policies",
    "Switch": "value_policies",
    "LambdaEpoch": "value_policies",
    "DecreasingOnPlateau": "value_policies",
    "Infinite": "batch_iter",
    "load_by_random_id": "batch_iter",
    "TQDM": "policies",
    "NEpochs": "policies",
    "TimeProfiler": "policies",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
