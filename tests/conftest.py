import csv
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cfgen  # noqa: F401  (first: it makes torchvision importable before any test imports diffusers)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Tiny models run several times faster on one thread, and test subprocesses then do not compete.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


def write_folder(root: Path, rows: list[dict], size: tuple[int, int] = (8, 8), mode: str = "RGB") -> Path:
    """A small imagefolder dataset: one random image per row, then metadata.csv."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(rows):
        row.setdefault("file_name", f"images/{i}.png")
        channels = len(Image.new(mode, (1, 1)).getbands())
        pixels = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
        Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(root / row["file_name"])
    with (root / "metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture
def small_folder(tmp_path: Path) -> Path:
    """40 rows: label y (3 classes), binary color, categorical shape, continuous size, two splits."""
    rng = np.random.default_rng(1)
    rows = [
        {
            "y": str(i % 3),
            "color": ["red", "green"][i % 2],
            "shape": ["square", "disk", "star", "ring"][rng.integers(4)],
            "size": f"{rng.normal():.3f}",
            "split": "train" if i < 30 else "test",
        }
        for i in range(40)
    ]
    return write_folder(tmp_path / "small", rows)


def _event_accumulators(folder: Path) -> Iterator:
    """One loaded tensorboard EventAccumulator per folder of event files under ``folder``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for directory in {path.parent for path in folder.rglob("events.out.tfevents.*")}:
        events = EventAccumulator(str(directory))
        events.Reload()
        yield events


def tensorboard_scalars(folder: Path, kind: str = "scalars") -> set[str]:
    """Every tag of ``kind`` (scalars, images) in the tensorboard event files under ``folder``."""
    return {tag for events in _event_accumulators(folder) for tag in events.Tags()[kind]}


def tensorboard_values(folder: Path, tag: str) -> list[float]:
    """The logged values of scalar ``tag`` under ``folder``, in step order."""
    scalars = [scalar for events in _event_accumulators(folder) if tag in events.Tags()["scalars"]
               for scalar in events.Scalars(tag)]  # fmt: skip
    return [scalar.value for scalar in sorted(scalars, key=lambda scalar: scalar.step)]
