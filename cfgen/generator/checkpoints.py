"""A training folder's checkpoints, resume point and final generator: only the main process writes, and
each is staged and renamed into place, so an interrupted run leaves whole checkpoints or none."""

import json
import os
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from cfgen.errors import CfgenError
from cfgen.generator.config import RESUMABLE_CHANGES, TrainingConfig
from cfgen.generator.model import CONFIG_FILE, Generator
from cfgen.generator.pipeline import save_generator
from cfgen.io import check_writable, create_folder, write_json, write_run_record

TRAINING_CONFIG_FILE = "training_config.json"
CHECKPOINTS_FOLDER = "checkpoints"


# Options added after some runs were stored, with the value those runs used.
STORED_DEFAULTS = {"lr_schedule": "constant", "prediction_type": "epsilon"}


def stored_config(out: Path) -> dict[str, Any] | None:
    """The training configuration a run in ``out`` was started with, if there is one (options added
    since filled in with the value such a run used)."""
    stored = out / TRAINING_CONFIG_FILE
    return {**STORED_DEFAULTS, **json.loads(stored.read_text())} if stored.is_file() else None


def resume_point(out: Path, config: TrainingConfig) -> Path | None:
    """Apply the output-folder rules, writing nothing; returns the checkpoint to resume from, if any.

    A run is refused when ``out`` exists, unless it is resumed (an interrupted run, or a finished one
    given more --steps) or replaced (--overwrite).
    """
    if config.resume and out.exists():
        stored = stored_config(out)
        if stored is None:
            raise CfgenError(
                f"{out} is not a generator training folder (it has no {TRAINING_CONFIG_FILE}); cannot --resume it"
            )
        _check_resumable(stored, config.record(), out)
        checkpoints = list_checkpoints(out)
        if (out / CONFIG_FILE).is_file():
            done = checkpoints[-1][0] if checkpoints else None
            if done is None or done >= config.steps:
                more = "raise --steps to continue it, or " if config.lr_schedule == "constant" else ""
                raise CfgenError(
                    f"{out} is a finished generator (trained for {done or 'an unknown number of'} steps); "
                    f"{more}pass --overwrite to train it again"
                )
        if checkpoints and checkpoints[-1][0] > config.steps:
            raise CfgenError(
                f"--steps {config.steps} is below step {checkpoints[-1][0]} that the run in {out} already reached; "
                f"give --steps {checkpoints[-1][0]} or more"
            )
        return checkpoints[-1][1] if checkpoints else None
    if out.exists() and not config.overwrite:
        raise CfgenError(
            f"output folder {out} already exists; pass --resume to continue it, --overwrite to replace it, "
            "or choose another --out"
        )
    check_writable(out)
    return None


def set_up_output(accelerator: Accelerator, out: Path, config: TrainingConfig) -> None:
    """Create (or replace) the folder, on the main process; a run resumed from a checkpoint keeps it as it
    is until ``start_output``, as the checkpoint may still refuse the resume."""
    accelerator.wait_for_everyone()  # every process has checked the folder before it changes
    if accelerator.is_main_process:
        if config.overwrite:
            shutil.rmtree(out, ignore_errors=True)
        create_folder(out)
    accelerator.wait_for_everyone()


def start_output(accelerator: Accelerator, out: Path, config: TrainingConfig) -> None:
    """Store the configuration and mark the folder incomplete until the new final model is written, on the
    main process, once the run may go ahead."""
    if accelerator.is_main_process:
        (out / CONFIG_FILE).unlink(missing_ok=True)
        write_json(out / TRAINING_CONFIG_FILE, config.record())
    accelerator.wait_for_everyone()


def _check_resumable(stored: dict[str, Any], current: dict[str, Any], out: Path) -> None:
    changed = [name for name in current if name not in RESUMABLE_CHANGES and stored.get(name) != current[name]]
    if changed:
        name = changed[0]
        raise CfgenError(
            f"--resume with a different {name} ({stored.get(name)!r} -> {current[name]!r}) than the run in {out}; "
            f"only {', '.join(sorted(RESUMABLE_CHANGES - {'out', 'resume', 'overwrite'}))} may change"
        )
    if current["lr_schedule"] != "constant" and stored["steps"] != current["steps"]:
        raise CfgenError(
            f"--resume with different --steps ({stored['steps']} -> {current['steps']}) under --lr-schedule "
            f"{current['lr_schedule']}, whose decay ends at --steps; only a constant schedule can be trained longer"
        )


def list_checkpoints(out: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a training folder as (step, folder), oldest first."""
    found = []
    for path in (out / CHECKPOINTS_FOLDER).glob("checkpoint-*"):
        step = path.name.removeprefix("checkpoint-")
        if step.isdigit():
            found.append((int(step), path))
    return sorted(found)


def save_checkpoint(accelerator: Accelerator, out: Path, step: int, keep: int) -> None:
    """accelerate save_state into a hidden folder, renamed when every process has written its part."""
    partial = out / CHECKPOINTS_FOLDER / f".checkpoint-{step}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = partial.with_name(f"checkpoint-{step}")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        for _, old in list_checkpoints(out)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def save_final(generator: Generator, out: Path, config: dict[str, Any], seed: int) -> None:
    """Write the generator beside the training files; cfgen_generator.json goes in last, atomically."""
    staging = out / ".generator.partial"
    shutil.rmtree(staging, ignore_errors=True)
    save_generator(generator, staging)
    for part in staging.iterdir():
        if part.name != CONFIG_FILE:
            shutil.rmtree(out / part.name, ignore_errors=True)
            os.replace(part, out / part.name)
    write_run_record(out, config, seed, generator.training.get("mixed_precision"))
    os.replace(staging / CONFIG_FILE, out / CONFIG_FILE)
    staging.rmdir()
