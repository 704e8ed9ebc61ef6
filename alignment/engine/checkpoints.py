"""Training checkpoints that are complete or absent, never half written.

The Trainer writes a checkpoint into ``output_dir/.staging`` (the temporary directory).
`checkpoint_commit` then syncs its files to disk, renames the directory into
``output_dir/checkpoints/`` and last writes the completion marker, ``complete.json``: the
step, the training's fingerprint and the SHA-256 of every file. A checkpoint without the
marker, or whose files no longer match their hashes, is not one: `checkpoint_latest` passes
over it to the newest checkpoint that is whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

CHECKPOINTS_DIR = "checkpoints"
STAGING_DIR = ".staging"
MARKER_FILE = "complete.json"
KEEP = 2  # complete checkpoints kept; older ones are deleted once a newer one is complete

_NAME = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int


@dataclass(frozen=True)
class CheckpointScan:
    """The newest whole checkpoint, and why newer ones were passed over."""

    latest: Checkpoint | None
    skipped: tuple[str, ...] = ()


def staging_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / STAGING_DIR


def staging_clear(output_dir: str | Path) -> None:
    """Remove whatever a killed worker left half written in the staging directory."""
    shutil.rmtree(staging_dir(output_dir), ignore_errors=True)


def checkpoint_commit(
    staged: Path, output_dir: str | Path, *, step: int, fingerprint: str, keep: int = KEEP
) -> Checkpoint:
    """Move a checkpoint the Trainer wrote to `staged` into place and mark it complete."""
    files = sorted(p for p in staged.rglob("*") if p.is_file())
    for path in files:
        _fsync(path)
    hashes = {str(p.relative_to(staged)): file_sha256(p) for p in files}
    root = Path(output_dir) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"checkpoint-{step}"
    if target.exists():  # a step done again after a resume from an older checkpoint
        shutil.rmtree(target)
    os.rename(staged, target)
    _fsync_dir(root)
    marker = {"step": step, "fingerprint": fingerprint, "files": hashes}
    tmp = target / f".{MARKER_FILE}.tmp"
    tmp.write_text(json.dumps(marker, sort_keys=True))
    _fsync(tmp)
    os.replace(tmp, target / MARKER_FILE)
    _fsync_dir(target)
    _prune(root, keep=keep)
    return Checkpoint(path=target, step=step)


def checkpoint_latest(output_dir: str | Path, *, fingerprint: str) -> CheckpointScan:
    """The newest complete checkpoint whose files match their recorded hashes.

    Raises ValueError when a complete checkpoint belongs to another training (another
    config or other examples): resuming from it would silently mix two runs."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    skipped: list[str] = []
    for step, path in sorted(_checkpoints(root), reverse=True):
        marker_path = path / MARKER_FILE
        if not marker_path.is_file():
            skipped.append(f"{path.name}: no completion marker (interrupted while saving)")
            continue
        try:
            marker = json.loads(marker_path.read_text())
            hashes = dict(marker["files"])
        except (ValueError, KeyError, TypeError):
            skipped.append(f"{path.name}: unreadable completion marker")
            continue
        if marker.get("fingerprint") != fingerprint:
            raise ValueError(
                f"{path} is a checkpoint of another training (other settings or examples); "
                "use a fresh output_dir"
            )
        bad = _mismatched(path, hashes)
        if bad:
            skipped.append(f"{path.name}: {bad}")
            continue
        return CheckpointScan(latest=Checkpoint(path=path, step=step), skipped=tuple(skipped))
    return CheckpointScan(latest=None, skipped=tuple(skipped))


def fingerprint_of(parts: object) -> str:
    """A stable hash of what decides a training's course (settings and examples)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _mismatched(path: Path, hashes: dict[str, str]) -> str | None:
    present = {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()} - {MARKER_FILE}
    if present != set(hashes):
        return "its files differ from the ones its marker lists"
    for name, expected in sorted(hashes.items()):
        if file_sha256(path / name) != expected:
            return f"{name} does not match its recorded SHA-256"
    return None


def _checkpoints(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return found


def _prune(root: Path, *, keep: int) -> None:
    complete = sorted(
        (step, path) for step, path in _checkpoints(root) if (path / MARKER_FILE).is_file()
    )
    newest = complete[-1][0] if complete else 0
    for step, path in _checkpoints(root):
        is_kept = (step, path) in complete[-keep:]
        if not is_kept and step <= newest:
            shutil.rmtree(path, ignore_errors=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
