"""Output folders and run records shared by every stage.

Outputs are built in a hidden sibling folder and renamed into place at the end, so a failed or
interrupted command leaves nothing half-written, and an existing folder is only replaced when
the user asked for it.
"""

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from cfgen.errors import CfgenError

RUN_FILE = "run.json"
_VERSIONED = ("cfgen", "torch", "torchvision", "diffusers", "accelerate", "numpy", "scipy")


def check_output_dir(path: Path, overwrite: bool) -> None:
    """Refuse an existing output folder unless overwriting was asked for, and a place that cannot hold one."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CfgenError(f"output path {path} is a file, not a folder; choose another --out")
    if path.exists() and not overwrite:
        raise CfgenError(f"output folder {path} already exists; choose another --out or pass --overwrite")
    check_writable(path)


def check_writable(path: Path) -> None:
    """Refuse, before any work, an output path whose nearest existing folder cannot take a new folder.

    Probed by creating and removing an empty folder there: permission bits do not tell (root, or
    file systems such as /proc).
    """
    existing = Path(os.path.abspath(path)).parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise CfgenError(f"cannot write {path}: {existing} is a file, not a folder; choose another --out")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".cfgen-probe-", dir=existing))
    except OSError as error:
        raise CfgenError(f"cannot write {path}: {existing} does not accept new folders ({error.strerror})") from None


def create_folder(path: Path, exist_ok: bool = True) -> None:
    """``mkdir -p`` that reports a place that cannot hold the folder in one line."""
    try:
        path.mkdir(parents=True, exist_ok=exist_ok)
    except OSError as error:
        raise CfgenError(f"cannot create folder {path}: {error.strerror or error}; choose another --out") from None


@contextmanager
def atomic_output_dir(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh staging folder that replaces ``path`` only if the block succeeds."""
    path = Path(path)
    check_output_dir(path, overwrite)
    create_folder(path.parent)
    remove_abandoned_staging(path)
    staging = path.parent / f".{path.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    create_folder(staging, exist_ok=False)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if path.exists():  # move the old folder aside first, so a folder is always in place
        retired = path.parent / f".{path.name}.old-{os.getpid()}"
        os.replace(path, retired)
        os.replace(staging, path)
        shutil.rmtree(retired)
    else:
        os.replace(staging, path)


@contextmanager
def output_dir_in_place(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Build ``path`` where it will stay, and remove it if the block fails.

    For outputs whose parts record their own paths (a run folder of several stages): built in a
    staging folder and renamed, those records would point at the staging name. A folder being
    replaced is kept aside until the new one is complete, and restored if it is not.
    """
    path = Path(path)
    check_output_dir(path, overwrite)
    retired = path.parent / f".{path.name}.old-{os.getpid()}"
    if path.exists():
        os.replace(path, retired)
    create_folder(path, exist_ok=False)
    try:
        yield path
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        if retired.exists():
            os.replace(retired, path)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def remove_abandoned_staging(path: Path) -> None:
    """Delete staging folders of ``path`` left by processes that died (a SIGKILL runs no clean-up)."""
    for staging in path.parent.glob(f".{path.name}.partial-*"):
        pid = staging.name.rsplit("-", 1)[1]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(staging, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another user
        return True
    return True


def package_versions() -> dict[str, str]:
    """Versions of the packages a result depends on, for reproducibility records."""
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_run_record(
    folder: Path, config: dict[str, Any], seed: int | None = None, mixed_precision: str | None = None
) -> None:
    """Write the resolved configuration, the command, the seed, the precision the run used (where
    it trained or generated with a model) and the versions beside outputs."""
    record = {
        "command": sys.argv,
        "config": config,
        "seed": seed,
        "mixed_precision": mixed_precision,
        "versions": package_versions(),
        "machine": platform.platform(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(folder / RUN_FILE, record)


def write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def scalar_record(record: dict[str, Any]) -> dict[str, Any]:
    """A configuration as tracker hyperparameters, which must be scalars: other values become JSON."""
    return {k: v if isinstance(v, int | float | str | bool) else json.dumps(v, default=str) for k, v in record.items()}


def finish_trackers(accelerator: Any) -> None:
    """Flush and close the experiment trackers of a training run.

    Not ``end_training()``: it also destroys the process group, which later stages of the same
    launch (the pipeline) still need.
    """
    for tracker in accelerator.trackers:
        tracker.finish()
