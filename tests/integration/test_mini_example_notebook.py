"""examples/mini_example.ipynb runs from top to bottom and produces what its text promises.

The notebook is executed once per test session with nbclient (kernel ``python3``, the
interpreter running the tests) in a fresh temporary working folder, offline, on CPU; the
tests then read what it wrote: the experiment's ``.npy`` logs (per-task validation, task
weights, the epoch hook's metric, the downstream evaluation), the PNG figures and the cells'
outputs. A failing cell fails the fixture with nbclient's ``CellExecutionError`` (the cell's
source and traceback).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dwi_mtl.logging.npy_history import load_npy_logs

pytestmark = pytest.mark.integration

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "mini_example.ipynb"
RUN = Path("mini_example_runs") / "digits"  # the notebook's EXPERIMENTS / NAME
EPOCHS = 6
DOWNSTREAM_EPOCHS = (1, 3, 5)  # downstream_every_n_epochs=2
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _require_notebook_tools() -> None:
    for module in ("nbclient", "nbformat", "ipykernel"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install nbclient nbformat ipykernel), "
                        "so the notebook cannot be executed")


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """The notebook executed in a fresh folder: ``(notebook with outputs, working folder)``."""
    _require_notebook_tools()
    import nbformat
    from nbclient import NotebookClient

    workdir = tmp_path_factory.mktemp("mini_example")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})
    client.execute()
    return notebook, workdir


def _logs(workdir: Path) -> dict[str, np.ndarray]:
    return load_npy_logs(workdir / RUN / "logs")


def test_notebook_is_saved_without_outputs() -> None:
    """A clean diff: no outputs, no execution counts, the standard python3 kernel."""
    _require_notebook_tools()
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code_cells
    for cell in code_cells:
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


def test_each_task_is_validated_every_epoch(executed: tuple[Any, Path]) -> None:
    logs = _logs(executed[1])
    for name in ("validation_digit_loss_per_epoch", "validation_digit_accuracy_per_epoch",
                 "validation_reconstruction_loss_per_epoch", "training_digit_loss_per_epoch",
                 "training_reconstruction_loss_per_epoch"):
        assert logs[name].shape == (EPOCHS,) and np.isfinite(logs[name]).all(), name
    # the shared blocks learn both tasks
    assert logs["validation_digit_loss_per_epoch"][-1] < logs["validation_digit_loss_per_epoch"][0]
    assert logs["validation_digit_accuracy_per_epoch"][-1] > 0.5
    recon = logs["validation_reconstruction_loss_per_epoch"]
    assert recon[-1] < recon[0]


def test_the_weighting_logs_each_tasks_weight(executed: tuple[Any, Path]) -> None:
    logs = _logs(executed[1])
    for task in ("digit", "reconstruction"):
        weights = logs[f"training_weight_{task}_per_batch"]
        assert len(weights) > EPOCHS and np.isfinite(weights).all() and (weights > 0).all()
    params = (executed[1] / RUN / "parameters.json").read_text(encoding="utf-8")
    assert "mgda" in params.lower()


def test_the_epoch_hook_scores_a_random_forest_every_epoch(executed: tuple[Any, Path]) -> None:
    accuracy = _logs(executed[1])["run_hook_rf_accuracy_per_epoch"]
    assert accuracy.shape == (EPOCHS,)
    assert np.isfinite(accuracy).all() and ((accuracy >= 0) & (accuracy <= 1)).all()


def test_the_downstream_task_is_evaluated_and_scored_on_the_test_set(
    executed: tuple[Any, Path],
) -> None:
    logs = _logs(executed[1])
    evaluated = np.zeros(EPOCHS, dtype=bool)
    evaluated[list(DOWNSTREAM_EPOCHS)] = True
    for name in ("run_downstream_loops_loss_per_epoch", "run_downstream_loops_accuracy_per_epoch",
                 "run_downstream_loops_test_accuracy_per_epoch"):
        values = logs[name]
        assert values.shape == (EPOCHS,), name
        assert np.isfinite(values[evaluated]).all() and np.isnan(values[~evaluated]).all(), name
    # better than always answering the majority class (about 60 % of digits have no loop)
    assert logs["run_downstream_loops_test_accuracy_per_epoch"][evaluated][-1] > 0.7


def test_the_plots_are_written_and_shown(executed: tuple[Any, Path]) -> None:
    notebook, workdir = executed
    figures = workdir / RUN / "figures"
    for name in ("digit_loss_per_epoch.png", "reconstruction_loss_per_epoch.png",
                 "weight_digit_per_batch.png", "weight_reconstruction_per_batch.png",
                 "accuracies.png"):
        assert (figures / name).read_bytes()[:8] == PNG_SIGNATURE, name
    shown = [output for cell in notebook.cells if cell.cell_type == "code"
             for output in cell.outputs if "image/png" in output.get("data", {})]
    assert len(shown) >= 4
    errors = [output for cell in notebook.cells if cell.cell_type == "code"
              for output in cell.outputs if output.output_type == "error"]
    assert not errors
