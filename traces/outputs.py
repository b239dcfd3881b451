"""Where gpufleet writes its outputs, and the one rule every writer follows: never
delete or overwrite a file gpufleet did not write.

An output directory carries a marker, `.gpufleet-output.json`, listing the files gpufleet
wrote there and the command that wrote them. `output_directory` stages a command's files
in a hidden sibling directory and, only if the command succeeds, moves them into place:

- a missing or empty directory receives them (and the marker);
- a directory with a marker has the files it lists replaced (listed files the new output
  lacks are removed); everything else in it is kept as it is;
- a non-empty directory without a marker is refused unless `force`, which writes beside
  the files already there, replacing only same-named ones, and deletes nothing.

Single files (`staged_file`) are written to a temporary sibling and renamed onto the
name given, replacing a file of that name as other command-line tools do.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

MARKER = ".gpufleet-output.json"
FORCE_HELP = (
    "write into a non-empty --out directory that is not a gpufleet output, beside the "
    "files already there: same-named files are replaced, nothing is deleted. Without "
    f"--force such a directory is refused. A gpufleet output directory (one with {MARKER}) "
    "is always accepted: the files gpufleet wrote there are replaced, other files are kept"
)


class OutputRefused(ValueError):
    """Writing here would change files gpufleet did not write."""


def add_force_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help=FORCE_HELP)


def check_output_dir(target: str | Path, force: bool = False) -> None:
    """Raise `OutputRefused` now if `output_directory(target, …, force)` would refuse,
    so a long run or recording is not wasted on an unusable `--out`."""
    target = Path(target)
    if os.path.lexists(target):
        _owned(target, force)


@contextmanager
def output_directory(target: str | Path, command: str, force: bool = False) -> Iterator[Path]:
    """Yield an empty staging directory; if the block succeeds, its files go into
    `target` by the rules above. If the block raises, `target` is left as it was."""
    target = Path(target)
    check_output_dir(target, force)
    # Absolute, so that `--out .` too has a parent to stage beside it in. mkdir, not
    # mkdtemp: a new output directory gets the umask's mode, not 0700.
    absolute = Path(os.path.abspath(target))
    absolute.parent.mkdir(parents=True, exist_ok=True)
    stage = absolute.parent / f".{absolute.name}.{uuid.uuid4().hex[:8]}.tmp"
    stage.mkdir()
    try:
        yield stage
        _commit(stage, target, command, force)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@contextmanager
def staged_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling name for `path` (same suffix: some writers choose the
    format by it); it is renamed onto `path` if the block succeeds, removed otherwise."""
    path = Path(path)
    if path.is_dir():
        raise OutputRefused(f"{path} is a directory; give a file name to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    stage = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        yield stage
        stage.replace(path)
    finally:
        stage.unlink(missing_ok=True)


def _commit(stage: Path, target: Path, command: str, force: bool) -> None:
    written = _files(stage)
    if not os.path.lexists(target):
        _write_marker(stage, command, written)
        stage.rename(target)  # one atomic step for a new directory
        return
    previous = _owned(target, force)
    clashes = [
        rel for rel in sorted(written) if rel not in previous and os.path.lexists(target / rel)
    ]
    if clashes and not force:
        raise OutputRefused(
            f"{target}/{clashes[0]} was not written by gpufleet; nothing written "
            "(--force replaces same-named files)"
        )
    # List everything first, so an interruption never leaves one of our files unlisted.
    _write_marker(target, command, previous | written)
    for rel in sorted(written):
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        (stage / rel).replace(target / rel)
    for rel in previous - written:
        _remove(target, rel)
    _write_marker(target, command, written)


def _owned(target: Path, force: bool) -> set[str]:
    """The files gpufleet wrote in the existing `target`; raises if writing is refused."""
    if not target.is_dir():
        raise OutputRefused(f"--out {target} exists and is not a directory")
    listed = _listed(target / MARKER)
    if listed is not None:
        return listed
    if force or next(target.iterdir(), None) is None:
        return set()
    raise OutputRefused(
        f"--out {target} is not empty and is not a gpufleet output directory (no {MARKER}); "
        "nothing written. --force writes beside the existing files"
    )


def _listed(marker: Path) -> set[str] | None:
    """The marker's files, or None when there is no usable marker. Only plain relative
    paths are accepted, so an edited marker cannot point outside the directory."""
    try:
        files = json.loads(marker.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(files, list) or not all(_plain(f) for f in files):
        return None
    return set(files)


def _plain(name: object) -> bool:
    """A normalised relative path below the directory: not absolute, no `..`, not `.`."""
    if not isinstance(name, str) or name in ("", "."):
        return False
    path = PurePosixPath(name)
    return path.as_posix() == name and not path.is_absolute() and ".." not in path.parts


def _files(root: Path) -> set[str]:
    return {
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if not path.is_dir() and path != root / MARKER
    }


def _remove(target: Path, rel: str) -> None:
    """Remove a stale file of ours, then the directories it leaves empty."""
    path = target / rel
    if not (path.is_file() or path.is_symlink()):
        return
    path.unlink()
    for parent in path.parents:
        if parent == target or any(parent.iterdir()):
            return
        parent.rmdir()


def _write_marker(directory: Path, command: str, files: set[str]) -> None:
    record = {
        "about": "files gpufleet wrote here; a later gpufleet run replaces these and no other",
        "command": f"gpufleet {command}",
        "files": sorted(files),
    }
    with staged_file(directory / MARKER) as stage:
        stage.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
