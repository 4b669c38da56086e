"""TensorBoard sink: real event files; resume purges events after the checkpointed step."""

from __future__ import annotations

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dwi_mtl.logging.tensorboard import TensorBoardSink


def _steps(folder, tag):
    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return [event.step for event in accumulator.Scalars(tag)]


def test_events_written_and_purged_on_resume(tmp_path):
    sink = TensorBoardSink(tmp_path)
    for step in range(5):
        sink.log_batch("training", step, {"loss": float(step)})
        if step == 2:
            state = sink.state_dict()
    sink.log_epoch(0, {"training_loss": 1.0})
    sink.close()
    assert _steps(tmp_path, "batch/loss") == [0, 1, 2, 3, 4]
    resumed = TensorBoardSink(tmp_path)
    resumed.load_state_dict(state)
    resumed.log_batch("training", 3, {"loss": 30.0})
    resumed.close()
    assert _steps(tmp_path, "batch/loss") == [0, 1, 2, 3]
