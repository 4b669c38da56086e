"""Multi-task learning: architectures, loss weightings, tasks and the MTLTrainer."""

from dwi_mtl._lazy import lazy_exports

_EXPORTS = {
    "MTLTask": "tasks",
    "MTLTrainer": "trainer",
    "TaskSampler": "scheduling",
    "RoundRobinSampler": "scheduling",
    "ProportionalSampler": "scheduling",
    "WeightedSampler": "scheduling",
    "get_task_sampler": "scheduling",
    "DownstreamEvaluator": "downstream",
    "FineTunedModel": "downstream",
    "DatasetSource": "task_sources",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
