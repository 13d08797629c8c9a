"""What the torch benchmarks share: the record of the machine, and results files that runs in parts extend."""

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from cfgen.data.images import ImageFormat
from cfgen.generator.checkpoints import TRAINING_CONFIG_FILE, stored_config
from cfgen.generator.config import TrainingConfig
from cfgen.generator.deconfounding import JUDGES_FOLDER
from cfgen.generator.model import CONFIG_FILE, build_unet
from cfgen.io import package_versions
from cfgen.judges import JUDGES_VERSION
from cfgen.judges.model import CONFIG_FILE as JUDGES_CONFIG


def machine() -> dict[str, Any]:
    """Where a figure was measured; the load average, because other work slows CPU timings."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "versions": package_versions(),
    }


def load_results(path: Path, settings: dict[str, Any], benchmark: str) -> dict[str, Any]:
    """The results file to extend when it was made with the same settings, else a fresh one."""
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous.get("settings") == settings:
            return previous
        print(f"settings differ from {path}; starting it afresh")
    return {"benchmark": benchmark, "settings": settings, "entries": {}}


# Training settings that are not the recipe: the data (checked by path) and where files go, how often
# to save or log.
NOT_RECIPE = (
    "data", "label", "attributes", "kinds", "data_format", "split", "resize", "deconfound", "out",
    "checkpoint_every", "keep_checkpoints", "sample_every", "log_every", "mixed_precision", "resume", "overwrite",
)  # fmt: skip
DIGITS = ImageFormat((28, 28), "RGB")  # the benchmarks' colored digits


def recipe(config: dict[str, Any], unet: dict[str, Any]) -> dict[str, Any]:
    """What a generator's weights depend on beyond its data and deconfounding choice: the resolved
    training configuration and the UNet's shape, so that a changed preset (a new architecture,
    a new loss weighting) is neither reused nor mixed into results of the old one."""
    shape = {key: unet[key] for key in ("block_out_channels", "layers_per_block", "down_block_types")}
    kept = {key: value for key, value in config.items() if key not in NOT_RECIPE}
    return json.loads(json.dumps({**kept, "unet": shape}))


def preset_recipe(preset: str, **options: Any) -> dict[str, Any]:
    """The recipe ``train_generator(..., preset=preset, **options)`` trains colored digits with today."""
    config = TrainingConfig(data=".", out=".", preset=preset, **options).resolved()
    return recipe(config.record(), dict(build_unet(DIGITS, config.architecture).config))


def trained_on(folder: Path, data: Path, preset: str, **options: Any) -> bool:
    """Whether ``folder`` holds a finished generator trained on ``data`` with today's ``preset`` recipe (and
    ``options`` on top of it), to reuse."""
    files = (folder / CONFIG_FILE, folder / TRAINING_CONFIG_FILE, folder / "unet" / "config.json")
    if not all(file.is_file() for file in files):
        return False
    stored = stored_config(folder)
    unet = json.loads((folder / "unet" / "config.json").read_text())
    judges = folder / JUDGES_FOLDER / JUDGES_CONFIG  # consistency training's judges, trained today's way
    current_judges = not judges.is_file() or json.loads(judges.read_text()).get("version") == JUDGES_VERSION
    same_recipe = recipe(stored, unet) == preset_recipe(preset, **options)
    return stored["data"] == str(data.resolve()) and same_recipe and current_judges
