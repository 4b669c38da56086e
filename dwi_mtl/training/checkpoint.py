"""Atomic checkpoint folders: write to a temporary folder, fsync, rename, mark complete.

Layout inside an experiment folder::

    checkpoint/
      step_00000120/          one complete checkpoint (kept: the last ``keep_last``)
        state.pt              torch.save of the whole state dict
        complete.json         written last: format version, byte size and CRC32 of state.pt
      step_00000150/

A checkpoint is *complete* only when ``complete.json`` exists and its size and checksum match
``state.pt``. Writing goes to ``checkpoint/.tmp-<step>-<pid>/``, every file and the folder are
fsynced, then the folder is renamed into place (an atomic ``rename`` on POSIX) and the parent
folder is fsynced. A crash at any moment leaves either the previous checkpoints untouched or
the new one complete; leftover temporary folders are ignored and cleaned on the next save.
Loading takes the newest complete checkpoint; when it is corrupt (truncated, bad checksum) a
warning names it and the previous complete one is used. Tensors are mapped to the requested
device, so a GPU checkpoint resumes on CPU.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dwi_mtl.errors import CheckpointError

logger = logging.getLogger(__name__)

#: Version of the checkpoint format, recorded in ``complete.json``.
CHECKPOINT_FORMAT_VERSION = 1
STATE_FILE = "state.pt"
MARKER_FILE = "complete.json"
_STEP_RE = re.compile(r"^step_(\d+)$")


@dataclass(frozen=True)
class CheckpointInfo:
    """Where a complete checkpoint lives and the step it was taken at."""

    path: Path
    step: int


class _ChecksumWriter(io.RawIOBase):
    """A write-only file wrapper that computes a CRC32 and byte count while writing."""

    def __init__(self, handle: Any) -> None:
        super().__init__()
        self._handle = handle
        self.crc = 0
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.crc = zlib.crc32(view, self.crc)
        self.size += view.nbytes
        self._handle.write(view)
        return view.nbytes


def _fsync_path(path: Path) -> None:
    """fsync a file or folder so its content (or its entries) reach the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_state_folder(
    folder: Path, state: dict[str, Any], extra_files: dict[str, str] | None = None
) -> None:
    """Write ``state`` and a completion marker into a *new* folder, atomically.

    Args:
        folder: final folder path; must not exist yet (its parent must).
        state: the object given to ``torch.save``.
        extra_files: optional ``name -> text`` files written next to the state (JSON, ...).

    Raises:
        CheckpointError: when ``folder`` already exists.
    """
    if folder.exists():
        raise CheckpointError(f"checkpoint folder '{folder}' already exists")
    tmp = folder.parent / f".tmp-{folder.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    with open(tmp / STATE_FILE, "wb") as handle:
        writer = _ChecksumWriter(handle)
        torch.save(state, writer)  # type: ignore[arg-type]
        handle.flush()
        os.fsync(handle.fileno())
    for name, text in (extra_files or {}).items():
        _write_text_synced(tmp / name, text)
    marker = {"format_version": CHECKPOINT_FORMAT_VERSION, "size": writer.size, "crc32": writer.crc}
    _write_text_synced(tmp / MARKER_FILE, json.dumps(marker))
    _fsync_path(tmp)
    os.rename(tmp, folder)
    _fsync_path(folder.parent)


def _write_text_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def read_state_folder(folder: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Verify a folder written by :func:`write_state_folder` and load its state.

    Raises:
        CheckpointError: naming the folder when the marker is missing, the format version is
            unknown, or the size/checksum does not match (truncated or corrupt file).
    """
    marker_path = folder / MARKER_FILE
    if not marker_path.is_file():
        raise CheckpointError(f"checkpoint '{folder}' is incomplete (no {MARKER_FILE})")
    try:
        marker = json.loads(marker_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint marker '{marker_path}' is unreadable: {exc}") from exc
    if marker.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint '{folder}' has format version {marker.get('format_version')!r}; "
            f"this dwi_mtl reads version {CHECKPOINT_FORMAT_VERSION}"
        )
    state_path = folder / STATE_FILE
    try:
        data = state_path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"checkpoint file '{state_path}' is unreadable: {exc}") from exc
    if len(data) != marker.get("size") or zlib.crc32(data) != marker.get("crc32"):
        raise CheckpointError(
            f"checkpoint file '{state_path}' is corrupt: {len(data)} bytes, expected "
            f"{marker.get('size')} with CRC32 {marker.get('crc32')}"
        )
    try:
        state: dict[str, Any] = torch.load(
            io.BytesIO(data), map_location=map_location, weights_only=False
        )
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise CheckpointError(f"checkpoint file '{state_path}' cannot be loaded: {exc}") from exc
    return state


class CheckpointManager:
    """Save numbered checkpoints atomically into one folder, keep the last N, load the newest.

    Args:
        folder: the experiment's ``checkpoint/`` folder (created when missing).
        keep_last: how many complete checkpoints to keep (>= 1). Keeping 2 or more lets a
            corrupt latest checkpoint fall back to the previous one.
    """

    def __init__(self, folder: str | Path, keep_last: int = 2) -> None:
        if int(keep_last) < 1:
            raise CheckpointError(f"keep_last must be >= 1, got {keep_last}")
        self.folder = Path(folder)
        self.keep_last = int(keep_last)

    def list(self) -> list[CheckpointInfo]:
        """Return the checkpoints that have a completion marker, oldest first."""
        if not self.folder.is_dir():
            return []
        found = []
        for child in self.folder.iterdir():
            match = _STEP_RE.match(child.name)
            if match and (child / MARKER_FILE).is_file():
                found.append(CheckpointInfo(child, int(match.group(1))))
        return sorted(found, key=lambda info: info.step)

    def exists(self) -> bool:
        """Whether at least one complete checkpoint is present."""
        return bool(self.list())

    def save(self, state: dict[str, Any], step: int) -> Path:
        """Write ``state`` as the checkpoint of ``step`` and prune old ones.

        Saving twice at the same step replaces the earlier checkpoint of that step (its new
        copy is complete before the old one is removed).
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        self._remove_temporaries()
        target = self.folder / f"step_{int(step):010d}"
        if target.exists():
            staged = self.folder / f"step_{int(step):010d}.new"
            if staged.exists():
                shutil.rmtree(staged)
            write_state_folder(staged, state)
            shutil.rmtree(target)
            os.rename(staged, target)
            _fsync_path(self.folder)
        else:
            write_state_folder(target, state)
        self._prune()
        return target

    def load_latest(
        self, map_location: str | torch.device = "cpu"
    ) -> tuple[dict[str, Any], CheckpointInfo]:
        """Load the newest complete checkpoint, falling back to older ones when corrupt.

        Raises:
            CheckpointError: when no checkpoint exists or every one is corrupt (the message
                lists each failure).
        """
        checkpoints = self.list()
        if not checkpoints:
            raise CheckpointError(f"no complete checkpoint in '{self.folder}'")
        failures = []
        for info in reversed(checkpoints):
            try:
                state = read_state_folder(info.path, map_location)
            except CheckpointError as exc:
                logger.warning("%s; falling back to the previous checkpoint", exc)
                failures.append(str(exc))
                continue
            return state, info
        raise CheckpointError("every checkpoint is corrupt: " + "; ".join(failures))

    def _prune(self) -> None:
        for info in self.list()[: -self.keep_last]:
            shutil.rmtree(info.path, ignore_errors=True)

    def _remove_temporaries(self) -> None:
        for child in self.folder.iterdir():
            if child.name.startswith(".tmp-") and child.is_dir():
                shutil.rmtree(child, ignore_errors=True)


def replace_folder_atomically(
    folder: Path, state: dict[str, Any], extra_files: dict[str, str]
) -> None:
    """Replace ``folder`` (e.g. ``best_model/``) by a new complete one.

    The new folder is fully written and synced first; then the old one is renamed aside, the
    new one renamed into place and the old one removed. If a crash happens between the two
    renames, :func:`recover_replaced_folder` restores the previous folder.
    """
    staged = folder.parent / f".{folder.name}.new"
    if staged.exists():
        shutil.rmtree(staged)
    write_state_folder(staged, state, extra_files)
    old = folder.parent / f".{folder.name}.old"
    if old.exists():
        shutil.rmtree(old)
    if folder.exists():
        os.rename(folder, old)
    os.rename(staged, folder)
    _fsync_path(folder.parent)
    if old.exists():
        shutil.rmtree(old)


def recover_replaced_folder(folder: Path) -> None:
    """Put back the previous copy of ``folder`` if a replacement was interrupted mid-way."""
    old = folder.parent / f".{folder.name}.old"
    if not folder.exists() and old.exists():
        os.rename(old, folder)
