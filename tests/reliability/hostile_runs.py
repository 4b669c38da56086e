"""Hostile configs, command lines and experiment folders (see :mod:`tests.reliability.hostile`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from tests.reliability.hostile import TRAIN_CONFIG, Attempt, Context
from tests.unit.data.real_inputs import write_json


def _create_config(text: str, names: str = "config.json") -> Callable[[Context], Attempt]:
    """create_hdf5_dataset with a config file of content ``text``."""
    def case(ctx: Context) -> Attempt:
        path = ctx.tmp / "config.json"
        path.write_text(text)
        return Attempt("create_hdf5_dataset", ctx.create_args(config=path), names,
                       [ctx.tmp / "out.hdf5"])
    return case


def _train_config(text: str, names: str, suffix: str = ".yaml") -> Callable[[Context], Attempt]:
    """train_model with a config file of content ``text``; the error must name ``names``."""
    def case(ctx: Context) -> Attempt:
        path = ctx.tmp / f"config{suffix}"
        path.write_text(text)
        return Attempt("train_model", ctx.train_args(config=path), names, [ctx.tmp / "run"])
    return case


def _write(ctx: Context, text: str) -> Path:
    path = ctx.tmp / "config.yaml"
    path.write_text(text)
    return path


def _train_cli(*extra: str, names: str) -> Callable[[Context], Attempt]:
    return lambda ctx: Attempt("train_model", ctx.train_args(None, None, *extra), names,
                               [ctx.tmp / "run"])


def _argv(script: str, make: Callable[[Context], list[str]], names: str
          ) -> Callable[[Context], Attempt]:
    return lambda ctx: Attempt(script, make(ctx), names, [ctx.tmp / "run", ctx.tmp / "out.hdf5"])


def _other_run(edit: Callable[[Context], str]) -> Callable[[Context], Attempt]:
    """resume_training on a copy of the completed run, after ``edit`` (returns the name the
    error must give); the copy's checkpoints must stay as they were."""
    def case(ctx: Context) -> Attempt:
        shutil.copytree(ctx.inputs.done, ctx.tmp / "run")
        names = edit(ctx)
        return Attempt("resume_training", [str(ctx.tmp), "run", "--new_max_epochs", "3"], names,
                       [ctx.tmp / "run" / "checkpoint" / "step_0000000099"])
    return case


def _edit_parameters(ctx: Context, change: Callable[[dict], None]) -> str:
    path = ctx.tmp / "run" / "parameters.json"
    parameters = json.loads(path.read_text())
    change(parameters)
    write_json(path, parameters)
    return "run"


def _foreign_checkpoint(ctx: Context) -> str:
    """The checkpoint of a run with another model size, moved into this experiment."""
    other = ctx.tmp / "other.yaml"
    other.write_text(TRAIN_CONFIG.replace("hidden_size: 8", "hidden_size: 12"))
    from dwi_mtl.cli import train_model

    train_model.main([str(other), str(ctx.tmp), "other", "--hdf5_file", str(ctx.inputs.hdf5)])
    shutil.rmtree(ctx.tmp / "run" / "checkpoint")
    shutil.copytree(ctx.tmp / "other" / "checkpoint", ctx.tmp / "run" / "checkpoint")
    return "checkpoint"


def _corrupt_every_checkpoint(ctx: Context) -> str:
    for state in (ctx.tmp / "run" / "checkpoint").glob("step_*/state.pt"):
        data = bytearray(state.read_bytes())
        data[len(data) // 2] ^= 0xFF
        state.write_bytes(bytes(data))
    return "corrupt"


RUN_CASES: dict[str, Callable[[Context], Attempt]] = {
    "config_create_not_json": _create_config("{dwi: volume"),
    "config_create_a_list": _create_config("[1, 2]"),
    "config_create_empty_object": _create_config("{}"),
    "config_create_unknown_group_type": _create_config(
        '{"dwi": {"type": "mesh", "files": ["dwi.nii.gz"]}}'),
    "config_create_files_not_a_list": _create_config(
        '{"dwi": {"type": "volume", "files": 3}}'),
    "config_create_unknown_standardization": _create_config(
        '{"dwi": {"type": "volume", "files": ["dwi.nii.gz"], "standardization": "magic"}}'),
    "config_create_file_pattern_matches_nothing": _create_config(
        '{"dwi": {"type": "volume", "files": ["t2.nii.gz"]}}', "t2.nii.gz"),
    "config_train_not_yaml": _train_config("trainer: {max_epochs: [1\n", "config.yaml"),
    "config_train_a_list": _train_config("- 1\n- 2\n", "config.yaml"),
    "config_train_not_json": _train_config('{"trainer": ', "config.json", ".json"),
    "config_train_unknown_section": _train_config(TRAIN_CONFIG + "optimiser: {}\n", "optimiser"),
    "config_train_batch_size_text": _train_config(
        TRAIN_CONFIG.replace("batch_size_training: 10", "batch_size_training: ten"),
        "batch_size_training"),
    "config_train_negative_max_epochs": _train_config(
        TRAIN_CONFIG.replace("max_epochs: 1", "max_epochs: -1"), "max_epochs"),
    "config_train_unknown_device": _train_config(
        TRAIN_CONFIG.replace("device: cpu", "device: tpu"), "tpu"),
    "config_train_unknown_model_option": _train_config(
        TRAIN_CONFIG.replace("hidden_size: 8", "hidden_size: 8, layers: 3"), "layers"),
    "config_train_missing_hdf5": lambda ctx: Attempt(
        "train_model", [str(_write(ctx, TRAIN_CONFIG + "hdf5_file: /nowhere/data.hdf5\n")),
                        str(ctx.tmp), "run"], "/nowhere/data.hdf5", [ctx.tmp / "run"]),
    "cli_train_no_arguments": _argv("train_model", lambda ctx: [], "usage"),
    "cli_train_max_epochs_not_int": _train_cli("--max_epochs", "two", names="--max_epochs"),
    "cli_train_unknown_comet_mode": _train_cli("--comet_mode", "cloud", names="--comet_mode"),
    "cli_train_unknown_option": _train_cli("--epochs", "3", names="--epochs"),
    "cli_train_negative_batch_size": _train_cli("--batch_size_training", "-5",
                                                names="batch_size_training"),
    "cli_train_set_without_equals": _train_cli("--set", "trainer.max_epochs",
                                               names="trainer.max_epochs"),
    "cli_train_missing_experiments_path": _argv(
        "train_model", lambda ctx: [str(ctx.inputs.train_config), str(ctx.tmp / "nope"), "run",
                                    "--hdf5_file", str(ctx.inputs.hdf5)], "nope"),
    "cli_train_experiment_name_with_slash": _argv(
        "train_model", lambda ctx: [str(ctx.inputs.train_config), str(ctx.tmp), "a/run",
                                    "--hdf5_file", str(ctx.inputs.hdf5)], "a/run"),
    "cli_resume_negative_epochs": _argv(
        "resume_training", lambda ctx: [str(ctx.inputs.experiments), "done",
                                        "--new_max_epochs", "-1"], "max_epochs"),
    "cli_create_negative_step_size": _argv(
        "create_hdf5_dataset", lambda ctx: ctx.create_args() + ["--step_size", "-1"],
        "step_size"),
    "cli_create_step_size_and_nb_points": _argv(
        "create_hdf5_dataset", lambda ctx: ctx.create_args() + ["--step_size", "1",
                                                                "--nb_points", "5"], "nb_points"),
    "run_train_into_an_existing_experiment": lambda ctx: Attempt(
        "train_model", [str(ctx.inputs.train_config), str(ctx.inputs.experiments), "done",
                        "--hdf5_file", str(ctx.inputs.hdf5)], "already exists"),
    "run_resume_a_folder_without_parameters": _argv(
        "resume_training", lambda ctx: [str(ctx.tmp), "nothing"], "parameters.json"),
    "run_parameters_not_json": _other_run(
        lambda ctx: ((ctx.tmp / "run" / "parameters.json").write_text("{"), "parameters.json")[1]),
    "run_parameters_of_an_unknown_class": _other_run(lambda ctx: _edit_parameters(
        ctx, lambda p: p["model"].__setitem__("class", "nowhere.Model"))),
    "run_checkpoint_of_another_model": _other_run(_foreign_checkpoint),
    "run_every_checkpoint_corrupt": _other_run(_corrupt_every_checkpoint),
    "run_dataset_moved_away": _other_run(lambda ctx: _edit_parameters(
        ctx, lambda p: p["dataset"]["config"].__setitem__("hdf5_file", "/moved/data.hdf5"))
        and "/moved/data.hdf5"),
}
