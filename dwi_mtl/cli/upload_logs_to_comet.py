"""``dwi_mtl_upload_logs_to_comet``: send the offline Comet archives of a run to Comet later.

A run trained with ``comet_mode="offline"`` (no network on the cluster nodes) writes zip
archives into ``<experiment>/comet/`` (:mod:`dwi_mtl.logging.comet`): one from the first
run, one more per resume, all with the same experiment key. This script finds them, orders
them (per experiment key: the archive that creates the experiment first, then the resumed
ones by start time) and uploads them with comet_ml's offline upload API
(``comet_ml.offline.main_upload``, what ``comet upload`` runs), so they append to one
experiment on the server. ``--dry_run`` lists what would be sent and touches no network.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dwi_mtl.cli.common import add_logging_arg, run_cli, setup_logging
from dwi_mtl.errors import ConfigError, DataError

logger = logging.getLogger("dwi_mtl.cli.upload_logs_to_comet")

#: Exit code when Comet refused or failed an upload (the archives are kept).
EXIT_UPLOAD_FAILED = 1


@dataclass(frozen=True)
class OfflineArchive:
    """What an offline Comet archive holds, read from its ``experiment.json``.

    Attributes:
        path: the zip file.
        experiment_key: the Comet experiment key (shared by a run and its resumes).
        creates: True for the archive that creates the experiment, False for a resume's.
        start_time: milliseconds since the epoch when that run started logging.
        project_name: the Comet project recorded offline (None: the default one).
        workspace: the Comet workspace recorded offline (None: the default one).
        nb_messages: number of logged items (metrics, parameters, ...) in the archive.
    """

    path: Path
    experiment_key: str
    creates: bool
    start_time: int
    project_name: str | None
    workspace: str | None
    nb_messages: int

    def describe(self) -> str:
        """One line for the listing of ``--dry_run``."""
        started = datetime.datetime.fromtimestamp(self.start_time / 1000, datetime.timezone.utc)
        return (f"{self.path}: experiment {self.experiment_key} "
                f"({'creates it' if self.creates else 'resumed run'}), started "
                f"{started:%Y-%m-%d %H:%M:%S} UTC, {self.nb_messages} logged items, "
                f"project {self.project_name or '(default)'}, "
                f"workspace {self.workspace or '(default)'}")


def read_archive(path: Path) -> OfflineArchive:
    """Read an offline archive's metadata.

    Raises:
        DataError: the file is not a zip archive written by comet_ml's offline mode.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            metadata = json.loads(archive.read("experiment.json"))
            messages = archive.read("messages.json") if "messages.json" in archive.namelist() \
                else b""
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, OSError) as exc:
        raise DataError(f"'{path}' is not an offline Comet archive ({exc})") from exc
    if not isinstance(metadata, dict) or "offline_id" not in metadata:
        raise DataError(f"'{path}' is not an offline Comet archive (no offline_id)")
    return OfflineArchive(
        path=path,
        experiment_key=str(metadata["offline_id"]),
        creates=metadata.get("resume_strategy", "create") == "create",
        start_time=int(metadata.get("start_time") or 0),
        project_name=metadata.get("project_name"),
        workspace=metadata.get("workspace"),
        nb_messages=sum(1 for line in messages.splitlines() if line.strip()),
    )


def find_archives(paths: Sequence[str | Path]) -> list[Path]:
    """The zip archives named by ``paths``: zip files, ``comet/`` folders or experiment folders.

    Raises:
        DataError: a path does not exist, or holds no archive (directly or in ``comet/``).
    """
    found: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_file():
            found.append(path)
            continue
        if not path.is_dir():
            raise DataError(f"'{path}' does not exist")
        folder = path / "comet" if (path / "comet").is_dir() else path
        archives = sorted(folder.glob("*.zip"))
        if not archives:
            raise DataError(f"no offline Comet archive (*.zip) in '{folder}'; was the run "
                            "trained with comet_mode='offline'?")
        found.extend(archives)
    return list(dict.fromkeys(p.resolve() for p in found))


def upload_order(archives: Sequence[OfflineArchive]) -> list[OfflineArchive]:
    """Order archives so each experiment is created before its resumes are appended.

    Experiments keep the order of their first archive's start time; within one, the creating
    archive comes first, then the resumed ones by start time.
    """
    first_start: dict[str, int] = {}
    for archive in archives:
        key = archive.experiment_key
        first_start[key] = min(first_start.get(key, archive.start_time), archive.start_time)
    return sorted(archives, key=lambda a: (first_start[a.experiment_key], a.experiment_key,
                                           not a.creates, a.start_time, str(a.path)))


def build_parser() -> argparse.ArgumentParser:
    """Return the script's argument parser."""
    parser = argparse.ArgumentParser(prog="dwi_mtl_upload_logs_to_comet",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+",
                        help="Experiment folders (archives in <experiment>/comet/), comet "
                             "folders, or archive files (.zip).")
    parser.add_argument("--dry_run", action="store_true",
                        help="List the archives and the order they would be sent in; "
                             "no network.")
    parser.add_argument("--workspace", help="Upload into this Comet workspace instead.")
    parser.add_argument("--project_name", help="Upload into this Comet project instead.")
    parser.add_argument("--force_upload", action="store_true",
                        help="Upload even an experiment Comet says was already uploaded.")
    add_logging_arg(parser)
    return parser


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    archives = upload_order([read_archive(path) for path in find_archives(args.paths)])
    for index, archive in enumerate(archives, start=1):
        logger.info("%d/%d %s", index, len(archives), archive.describe())
    orphans = {a.experiment_key for a in archives} - {a.experiment_key for a in archives
                                                      if a.creates}
    for key in sorted(orphans):
        logger.warning("experiment %s: no archive creates it here; its resumes append to it "
                       "only if it was uploaded before", key)
    if args.dry_run:
        logger.info("dry run: %d archive(s) would be uploaded; nothing sent", len(archives))
        return 0
    return send_archives(archives, args.workspace, args.project_name, args.force_upload)


def send_archives(
    archives: Sequence[OfflineArchive], workspace: str | None, project_name: str | None,
    force_upload: bool,
) -> int:
    """Upload ``archives`` in order with ``comet_ml.offline.main_upload``; return an exit code.

    Raises:
        ConfigError: no Comet API key is configured (``COMET_API_KEY`` or ``.comet.config``),
            or Comet rejects the key.
    """
    os.environ.setdefault("COMET_AUTO_LOG_ENV_DETAILS", "false")
    import comet_ml.config
    import comet_ml.offline
    from comet_ml.exceptions import InvalidAPIKey

    if not comet_ml.config.get_api_key(None, comet_ml.config.get_config()):
        raise ConfigError("no Comet API key: set COMET_API_KEY or api_key in ~/.comet.config "
                          "(or use --dry_run)")
    try:
        comet_ml.offline.main_upload([str(a.path) for a in archives], force_upload,
                                     override_workspace=workspace,
                                     override_project_name=project_name)
    except InvalidAPIKey as exc:
        raise ConfigError(f"Comet rejected the API key: {exc}") from exc
    except comet_ml.offline.OfflineExperimentUploadFailed as exc:
        logger.error("upload failed: %s (the archives are kept; run again)", exc)
        return EXIT_UPLOAD_FAILED
    logger.info("uploaded %d archive(s)", len(archives))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point (``dwi_mtl_upload_logs_to_comet``)."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
