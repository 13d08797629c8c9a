"""What the torch benchmarks share: the record of the machine, and results files that runs in parts extend."""

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from cfgen.generator.model import CONFIG_FILE, Generator
from cfgen.io import package_versions


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


def trained_on(folder: Path, data: Path, preset: str) -> bool:
    """Whether ``folder`` holds a finished generator trained on ``data`` with ``preset``, to reuse."""
    if not (folder / CONFIG_FILE).is_file():
        return False
    training = Generator.load(folder).training
    return training.get("data", {}).get("path") == str(data.resolve()) and training.get("preset") == preset
