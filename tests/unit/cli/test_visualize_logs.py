"""dwi_mtl_visualize_logs: PNG figures and CSV tables from real .npy logs, and its errors."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from dwi_mtl.cli.common import EXIT_BAD_INPUT
from dwi_mtl.cli.visualize_logs import main
from dwi_mtl.errors import ConfigError, DataError
from dwi_mtl.logging import visualize
from dwi_mtl.logging.npy_history import NpyHistory, load_npy_logs
from dwi_mtl.logging.visualize import load_experiment_logs, select_metrics, smooth, unique_names

REPO = Path(__file__).resolve().parents[3]
TASKS = ("tracking", "bundles")


def write_run(folder: Path, nb_epochs: int = 3, nb_batches: int = 5, seed: int = 0) -> Path:
    """An experiment folder whose logs/ is written by the trainer's real NpyHistory."""
    rng = np.random.default_rng(seed)
    history = NpyHistory(folder / "logs")
    for epoch in range(nb_epochs):
        for _ in range(nb_batches):
            losses = {f"loss_{t}": float(rng.uniform(0.1, 1.0)) for t in TASKS}
            weights = {f"weight_{t}": float(rng.uniform(0.5, 1.5)) for t in TASKS}
            history.append_batch("training", {"loss": sum(losses.values()), **losses,
                                              **weights, "lr": 0.01 / (epoch + 1),
                                              "grad_norm_before_clip": float(rng.uniform(1, 3))})
            history.append_batch("validation", {"loss": float(rng.uniform(0.1, 1.0))})
        history.append_epoch("training", {"loss": 1.0 / (epoch + 1), "lr": 0.01 / (epoch + 1),
                                          **{f"loss_{t}": 0.5 / (epoch + 1) for t in TASKS}})
        history.append_epoch("validation", {"loss": 1.2 / (epoch + 1)})
    history.save()
    return folder


def pngs(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("*.png")}


def test_two_experiments_side_by_side(tmp_path):
    run_a, run_b = write_run(tmp_path / "a"), write_run(tmp_path / "b", nb_epochs=4, seed=1)
    out = tmp_path / "out"
    assert main([str(run_a), str(run_b), "--out_dir", str(out)]) == 0
    names = pngs(out)
    for expected in ("loss_per_epoch.png", "loss_per_batch.png", "lr_per_epoch.png",
                     "lr_per_batch.png", "loss_tracking_per_batch.png",
                     "grad_norm_before_clip_per_batch.png", "weight_bundles_per_batch.png",
                     "task_losses_per_epoch.png", "task_losses_per_batch.png",
                     "task_weights_per_batch.png"):
        assert expected in names, expected
    image = matplotlib.image.imread(out / "task_losses_per_batch.png")
    assert image.shape[1] > 1000  # one panel per experiment, side by side (6 inches each)
    assert not list(out.glob(".*"))  # no temporary file left


def record_legends(monkeypatch) -> dict[str, list[list[str]]]:
    """``png name -> legend labels of each panel`` of every figure plot_experiments saves."""
    recorded: dict[str, list[list[str]]] = {}
    original = visualize._save

    def save(figure, path):
        recorded[path.name] = [axis.get_legend_handles_labels()[1] for axis in figure.axes]
        original(figure, path)

    monkeypatch.setattr(visualize, "_save", save)
    return recorded


def test_figure_shows_every_experiment_in_its_legend(tmp_path, monkeypatch):
    run_a, run_b = write_run(tmp_path / "a"), write_run(tmp_path / "b", seed=1)
    legends = record_legends(monkeypatch)
    assert main([str(run_a), str(run_b), "--out_dir", str(tmp_path / "out"),
                 "--metrics", "loss", "--granularity", "epoch"]) == 0
    assert legends == {"loss_per_epoch.png": [
        ["a (training)", "a (validation)", "b (training)", "b (validation)"]]}


def test_metric_patterns_and_granularity(tmp_path):
    run = write_run(tmp_path / "exp")
    out = tmp_path / "out"
    assert main([str(run), "--out_dir", str(out), "--metrics", "loss_*", "lr",
                 "--granularity", "epoch"]) == 0
    assert pngs(out) == {"loss_bundles_per_epoch.png", "loss_tracking_per_epoch.png",
                         "lr_per_epoch.png"}


def test_default_output_is_the_experiment_plots_folder(tmp_path):
    run = write_run(tmp_path / "exp")
    assert main([str(run / "logs"), "--granularity", "epoch", "--smoothing", "0"]) == 0
    assert "loss_per_epoch.png" in pngs(run / "plots")


def test_csv_tables_hold_the_raw_series(tmp_path):
    run = write_run(tmp_path / "exp", nb_epochs=2, nb_batches=3)
    out = tmp_path / "out"
    assert main([str(run), "--out_dir", str(out), "--save_to_csv", "--granularity", "epoch"]) == 0
    logs = load_npy_logs(run / "logs")
    with open(out / "exp_per_epoch.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    np.testing.assert_array_equal([float(r["validation_loss"]) for r in rows],
                                  logs["validation_loss_per_epoch"])
    with open(out / "exp_training_per_batch.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6
    np.testing.assert_array_equal([float(r["loss_tracking"]) for r in rows],
                                  logs["training_loss_tracking_per_batch"])
    assert (out / "exp_validation_per_batch.csv").exists()


def test_unknown_metric_is_refused_before_writing(tmp_path, capsys):
    run = write_run(tmp_path / "exp")
    out = tmp_path / "out"
    code = main([str(run), "--out_dir", str(out), "--metrics", "loss", "accuracy"])
    assert code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "unknown metric 'accuracy'" in err and "loss_tracking" in err
    assert not out.exists()


@pytest.mark.parametrize("make, message", [
    (lambda root: root / "missing", "does not exist"),
    (lambda root: (root / "empty" / "logs").mkdir(parents=True) or root / "empty", "no .npy logs"),
])
def test_missing_experiment_or_logs(tmp_path, capsys, make, message):
    folder = make(tmp_path)
    assert main([str(folder), "--out_dir", str(tmp_path / "out")]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert message in err and str(folder) in err
    assert not (tmp_path / "out").exists()


def test_several_experiments_need_out_dir(tmp_path, capsys):
    run_a, run_b = write_run(tmp_path / "a"), write_run(tmp_path / "b")
    assert main([str(run_a), str(run_b)]) == EXIT_BAD_INPUT
    assert "--out_dir" in capsys.readouterr().err


def test_bad_smoothing_is_refused_before_writing(tmp_path, capsys):
    run = write_run(tmp_path / "exp")
    assert main([str(run), "--out_dir", str(tmp_path / "o"), "--smoothing", "1.5"]) == 2
    assert "--smoothing" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_show_without_display_writes_files_and_warns(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    run = write_run(tmp_path / "exp")
    assert main([str(run), "--out_dir", str(tmp_path / "o"), "--show",
                 "--granularity", "epoch"]) == 0
    assert "no display" in capsys.readouterr().err
    assert "loss_per_epoch.png" in pngs(tmp_path / "o")


def test_list_metrics_writes_nothing(tmp_path, capsys):
    run = write_run(tmp_path / "exp")
    assert main([str(run), "--list_metrics"]) == 0
    assert "exp per batch: grad_norm_before_clip, loss" in capsys.readouterr().err
    assert not (run / "plots").exists()


def test_smooth_is_a_debiased_nan_aware_ema():
    values = np.array([1.0, 3.0, np.nan, 5.0, 7.0])
    np.testing.assert_array_equal(smooth(values, 0.0), values)
    expected, num, den = [], 0.0, 0.0
    for v in values:  # reference: TensorBoard's debiased EMA, skipping NaN
        if np.isfinite(v):
            num, den = 0.6 * num + 0.4 * v, 0.6 * den + 0.4
        else:
            num, den = 0.6 * num, 0.6 * den
        expected.append(num / den if np.isfinite(v) else np.nan)
    np.testing.assert_allclose(smooth(values, 0.6), expected)
    np.testing.assert_allclose(smooth(np.full(50, 2.0), 0.9), 2.0)
    with pytest.raises(ConfigError, match="smoothing"):
        smooth(values, 1.0)


def test_library_errors_name_the_folder(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        load_experiment_logs(tmp_path / "nowhere")
    exp = load_experiment_logs(write_run(tmp_path / "exp"))
    with pytest.raises(ConfigError, match="'nope'"):
        select_metrics([exp], ["nope"], "epoch")
    assert select_metrics([exp], ["loss*"], "epoch") == ["loss", "loss_bundles", "loss_tracking"]


def test_script_help_and_exit_code():
    script = REPO / "scripts" / "visualize_logs.py"
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0 and "--save_to_csv" in result.stdout
    result = subprocess.run([sys.executable, str(script), "/nonexistent/exp"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == EXIT_BAD_INPUT
    assert "/nonexistent/exp" in result.stderr and "Traceback" not in result.stderr


def test_series_outside_the_naming_convention_are_ignored(tmp_path):
    run = write_run(tmp_path / "exp", nb_epochs=1, nb_batches=2)
    np.save(run / "logs" / "notes.npy", np.arange(3.0))
    np.save(run / "logs" / "training_loss.npy", np.arange(3.0))
    exp = load_experiment_logs(run)
    assert "notes" not in exp.metrics("epoch") + exp.metrics("batch")
    assert exp.series["batch"]["loss"]["training"].shape == (2,)
    assert exp.metrics("epoch") == ["loss", "loss_bundles", "loss_tracking", "lr"]


def test_legend_names():
    assert unique_names(["runs/a", "runs/b/logs"]) == ["a", "b"]
    assert unique_names(["x/run", "y/run"]) == ["x/run", "y/run"]


# -- logs of a real MTLTrainer run: hooks, downstream evaluations, <task>_loss -------------------
def train_mtl(root: Path, name: str, weighting: str | None) -> Path:
    """A 2-epoch MTLTrainer run (two tasks, an epoch hook, a downstream task); its folder."""
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    from dwi_mtl.mtl import MTLTask, MTLTrainer

    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(40, 4, generator=generator)
    labels = (inputs[:, 0] > 0).long()

    def cross_entropy(outputs, batch):
        return nn.functional.cross_entropy(outputs, batch[1])

    def accuracy(outputs, batch):
        return float((outputs.argmax(1) == batch[1]).float().mean())

    def task(task_name: str, targets, **kwargs) -> MTLTask:
        return MTLTask(task_name, nn.Linear(6, 2), cross_entropy,
                       train_data=TensorDataset(inputs[:30], targets[:30]), batch_size=10,
                       **kwargs)

    digit = task("digit", labels, metrics={"accuracy": accuracy},
                 valid_data=TensorDataset(inputs[30:], labels[30:]))
    root.mkdir(exist_ok=True)
    trainer = MTLTrainer(
        {"encoder": nn.Linear(4, 6)}, [digit, task("shape", 1 - labels)], root, name,
        weighting=weighting, learning_rates=1e-2, max_epochs=2, seed=0, progress_bar=False,
        downstream_tasks=[task("loops", labels, metrics={"accuracy": accuracy})],
        downstream_every_n_epochs=1, downstream_epochs=1,
    )

    @trainer.callback_after_each_epoch
    def probe(trainer, epoch):
        return {"rf_accuracy": 0.5 + epoch / 10}

    trainer.train_and_validate()
    return root / name


@pytest.fixture(scope="module")
def mtl_runs(tmp_path_factory) -> dict[str, Path]:
    """Two real MTL runs: with the MGDA weighting (weight_<task> series) and without."""
    root = tmp_path_factory.mktemp("mtl_runs")
    return {"weighted": train_mtl(root, "weighted", "mgda"),
            "plain": train_mtl(root, "plain", None)}


def test_hook_and_downstream_results_are_plotted(mtl_runs, tmp_path, monkeypatch):
    run = mtl_runs["weighted"]
    logs = load_npy_logs(run / "logs")
    assert "run_hook_rf_accuracy_per_epoch" in logs  # what the trainer really writes
    out = tmp_path / "out"
    legends = record_legends(monkeypatch)
    assert main([str(run), "--out_dir", str(out), "--metrics", "hook_rf_accuracy",
                 "downstream_*", "--granularity", "epoch", "--save_to_csv"]) == 0
    assert pngs(out) == {"hook_rf_accuracy_per_epoch.png",
                         "downstream_loops_accuracy_per_epoch.png",
                         "downstream_loops_loss_per_epoch.png",
                         "downstream_loops_nb_steps_per_epoch.png"}
    assert legends["hook_rf_accuracy_per_epoch.png"] == [["weighted (run)"]]
    with open(out / "weighted_per_epoch.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    np.testing.assert_array_equal([float(r["run_hook_rf_accuracy"]) for r in rows],
                                  logs["run_hook_rf_accuracy_per_epoch"])


def test_every_per_epoch_series_is_a_metric(mtl_runs):
    run = mtl_runs["weighted"]
    exp = load_experiment_logs(run)
    names = load_npy_logs(run / "logs")
    per_epoch = {n for n in names if n.endswith("_per_epoch")}
    grouped = {f"{phase}_{metric}_per_epoch" for metric, phases in exp.series["epoch"].items()
               for phase in phases}
    assert grouped == per_epoch
    # the run-level lr is drawn with the training phase's mean lr, on the same axes
    assert set(exp.series["epoch"]["lr"]) == {"training", "run"}


def test_mtl_task_losses_figure(mtl_runs, tmp_path, monkeypatch):
    legends = record_legends(monkeypatch)
    out = tmp_path / "out"
    assert main([str(mtl_runs["weighted"]), "--out_dir", str(out)]) == 0
    assert {"task_losses_per_epoch.png", "task_losses_per_batch.png",
            "task_weights_per_epoch.png", "task_weights_per_batch.png"} <= pngs(out)
    assert legends["task_losses_per_epoch.png"] == [[
        "digit_loss (training)", "digit_loss (validation)",
        "shape_loss (training)", "shape_loss (validation)"]]
    assert legends["task_losses_per_batch.png"] == [["digit_loss (training)",
                                                     "shape_loss (training)"]]


def test_task_names_come_from_parameters_json(mtl_runs, tmp_path, monkeypatch):
    """Without a weighting there is no weight_<task> series: parameters.json names the tasks,
    and a metric that merely ends in _loss (the downstream task's) is not a task loss."""
    run = mtl_runs["plain"]
    assert not any("weight_" in name for name in load_npy_logs(run / "logs"))
    exp = load_experiment_logs(run / "logs")
    assert exp.tasks == ["digit", "shape"]
    assert visualize.task_groups([exp], "epoch") == {
        "task_losses": ["digit_loss", "shape_loss"]}
    legends = record_legends(monkeypatch)
    assert main([str(run), "--out_dir", str(tmp_path / "out"), "--granularity", "epoch"]) == 0
    assert legends["task_losses_per_epoch.png"] == [[
        "digit_loss (training)", "digit_loss (validation)",
        "shape_loss (training)", "shape_loss (validation)"]]


def test_unreadable_parameters_json_only_loses_its_task_names(tmp_path, caplog):
    run = write_run(tmp_path / "exp")
    (run / "parameters.json").write_text("{not json", encoding="utf-8")
    exp = load_experiment_logs(run)
    assert "parameters.json" in caplog.text and "unreadable" in caplog.text
    assert exp.tasks == ["bundles", "tracking"]  # from the loss_<task> / weight_<task> series
    assert visualize.task_groups([exp], "epoch") == {
        "task_losses": ["loss_bundles", "loss_tracking"]}


# -- matplotlib backend: the library never switches it -------------------------------------------
def test_plotting_keeps_the_session_backend(tmp_path):
    import matplotlib
    import matplotlib.pyplot as plt

    run = write_run(tmp_path / "exp", nb_epochs=2, nb_batches=2)
    previous = matplotlib.get_backend()
    matplotlib.use("svg")  # stands for the user's backend (Jupyter's inline, TkAgg, ...)
    try:
        figures_before = plt.get_fignums()
        written = visualize.plot_experiments([load_experiment_logs(run)], tmp_path / "out")
        assert matplotlib.get_backend() == "svg"
        assert plt.get_fignums() == figures_before  # nothing left for a later plt.show()
    finally:
        matplotlib.use(previous)
    assert {"loss_per_epoch.png", "task_losses_per_batch.png"} <= {p.name for p in written}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)


def test_show_draws_with_pyplot_then_closes(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    run = write_run(tmp_path / "exp", nb_epochs=2, nb_batches=2)
    monkeypatch.setattr(visualize, "display_available", lambda: True)
    shown: list[int] = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: shown.append(len(plt.get_fignums())))
    before = plt.get_fignums()
    assert main([str(run), "--out_dir", str(tmp_path / "o"), "--show", "--metrics", "loss",
                 "lr", "--granularity", "epoch"]) == 0
    assert shown == [len(before) + 2]  # both figures open in one plt.show()
    assert plt.get_fignums() == before


@pytest.mark.parametrize("backend, display, expected", [
    ("module://matplotlib_inline.backend_inline", None, True),  # Jupyter, no X server
    ("agg", None, False),
    ("agg", ":0", True),
])
def test_display_available(monkeypatch, backend, display, expected):
    import matplotlib

    monkeypatch.setattr(matplotlib, "get_backend", lambda auto_select=True: backend)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    if display is None:
        monkeypatch.delenv("DISPLAY", raising=False)
    else:
        monkeypatch.setenv("DISPLAY", display)
    assert visualize.display_available() is expected


def test_sparse_epoch_series_are_drawn_across_their_gaps(tmp_path):
    """A downstream evaluation every other epoch (NaN between) is one line through its points."""
    history = NpyHistory(tmp_path / "exp" / "logs")
    for epoch in range(5):
        history.append_epoch("training", {"loss": 1.0 / (epoch + 1)})
        evaluated = {"downstream_loops_accuracy": 0.5 + epoch / 10} if epoch % 2 else {}
        history.append_epoch("run", {"lr": 0.01, **evaluated})
    history.save()
    exp = load_experiment_logs(tmp_path / "exp")
    figure = visualize._metric_figure(None, [exp], "downstream_loops_accuracy", "epoch", 0.0)
    (line,) = figure.axes[0].get_lines()
    np.testing.assert_array_equal(line.get_xdata(), [1, 3])
    np.testing.assert_allclose(line.get_ydata(), [0.6, 0.8])
