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
    """Refuse an existing output folder unless overwriting was asked for."""
    if path.exists() and not path.is_dir():
        raise CfgenError(f"output path {path} is a file, not a folder; choose another --out")
    if path.exists() and not overwrite:
        raise CfgenError(f"output folder {path} already exists; choose another --out or pass --overwrite")


@contextmanager
def atomic_output_dir(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh staging folder that replaces ``path`` only if the block succeeds."""
    path = Path(path)
    check_output_dir(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".{path.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
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
    path.mkdir(parents=True)
    try:
        yield path
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        if retired.exists():
            os.replace(retired, path)
        raise
    shutil.rmtree(retired, ignore_errors=True)


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
