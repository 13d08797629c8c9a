"""Judges for evaluation: every discrete variable of a dataset read off images, by a network that must
not share the shortcut it is meant to expose.

On a built-in dataset the judges use what its drawing is known to be (``cfgen.datasets``): some
variables are read off the pixels, and the network is trained on images drawn with every factor
independent, from sources no evaluation row uses. On any other dataset the network is trained on the
training split with group-balanced sampling and a product with the confounding
(``cfgen.judges.training``). Judges are cached, keyed by everything they depend on.
"""

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cfgen.data.counterfactuals import dataset_digest
from cfgen.data.images import ImageFormat, check_images, load_images
from cfgen.data.schema import Schema
from cfgen.data.table import MetadataTable
from cfgen.data.tensors import to_model_range
from cfgen.datasets import BuiltinDataset, builtin_of
from cfgen.judges.model import AttributeJudges
from cfgen.judges.training import JUDGES_VERSION, load_or_train

DEFAULT_JUDGE_STEPS = 2000
DEFAULT_JUDGE_BATCH_SIZE = 128
DEFAULT_JUDGE_IMAGES = 20000  # drawn for a built-in dataset's judges


def default_judge_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cfgen" / "judges"


@dataclass
class Judges:
    """Reads a dataset's discrete variables off uint8 (N, H, W, C) images, as codes in the schema's order."""

    schema: Schema
    network: AttributeJudges | None
    image_format: ImageFormat
    record: dict
    builtin: BuiltinDataset | None = None  # reads its pixel-judged variables and feeds the network its input

    def __call__(self, images: np.ndarray, batch_size: int = 512) -> dict[str, np.ndarray]:
        return self.read(images, batch_size)[0]

    def read(self, images: np.ndarray, batch_size: int = 512) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """Every judged variable's codes and the network's (N, D) features (None without a network), in one pass."""
        read: dict[str, np.ndarray] = {}
        pixel = self.record["pixel"]
        if pixel:
            for name, found in self.builtin.read_pixels(images, pixel).items():
                read[name] = self._codes(name, found)
        if self.network is None:
            return read, None
        device = next(self.network.parameters()).device
        features, outputs = [], [[] for _ in self.network.names]
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                part = images[start : start + batch_size]
                trunk, logits = self.network(to_model_range(self._input(part)).to(device))
                features.append(trunk.float().cpu().numpy())
                for j, head in enumerate(logits):
                    outputs[j].append(head.argmax(1).cpu().numpy())
        for j, name in enumerate(self.network.names):
            read[name] = np.concatenate(outputs[j])
        return read, np.concatenate(features)

    def _input(self, images: np.ndarray) -> np.ndarray:
        return self.builtin.judge_input(images) if self.builtin is not None else images

    def _codes(self, name: str, value_names: np.ndarray) -> np.ndarray:
        """Codes of value names, -1 for a value outside the schema's vocabulary (a colour the data never shows)."""
        position = {value: i for i, value in enumerate(self.schema[name].values)}
        return np.array([position.get(value, -1) for value in value_names], dtype=np.int64)


def load_or_train_judges(
    table: MetadataTable,
    schema: Schema,
    cache: Path,
    steps: int = DEFAULT_JUDGE_STEPS,
    batch_size: int = DEFAULT_JUDGE_BATCH_SIZE,
    images: int = DEFAULT_JUDGE_IMAGES,
    seed: int = 0,
    progress: bool = False,
    resize: int | None = None,
) -> Judges:
    """The judges of a dataset's discrete variables, from the cache or trained (then cached); a built-in
    dataset draws ``images`` judge images (at most as many as ``steps`` batches hold)."""
    builtin = builtin_of(table)
    images = min(images, steps * batch_size)  # never more distinct images than the training will see
    pixel = [name for name in schema.names if builtin is not None and name in builtin.pixel_judged]
    learned = [v for v in schema.variables if v.is_discrete and v.name not in pixel]
    if builtin is not None:
        size = builtin.image_size(table)
        image_format = ImageFormat((size, size), "RGB")
        identity = builtin.judge_data_identity(table)
    else:
        image_format = check_images(table.split(table.training_split), resize)
        identity = dataset_digest(table)
    key = {
        "version": JUDGES_VERSION,
        "data": identity,
        "builtin": builtin is not None,
        "variables": [[v.name, list(v.values)] for v in learned],
        "format": [list(image_format.size), image_format.mode],
        "steps": steps,
        "batch_size": batch_size,
        "images": images if builtin is not None else None,
        "input": builtin.judge_input_name if builtin is not None else "image",
        "convolutions": builtin.judge_convolutions if builtin is not None else 1,
        "seed": seed,
    }
    record = {"pixel": pixel, "learned": [v.name for v in learned], "cache_key": key}
    if not learned:
        return Judges(schema, None, image_format, record, builtin)

    def training_data() -> tuple[np.ndarray, np.ndarray, list[str], list[int]]:
        if builtin is not None:
            pixels, codes = builtin.judge_data(table, learned, images, seed)
        else:
            rows = table.split(table.training_split)
            pixels = load_images(rows.image_paths, image_format, progress)
            codes = np.stack([v.encode(rows.column(v.name)) for v in learned], axis=1)
        return pixels, codes, [v.name for v in learned], [v.num_values for v in learned]

    folder = cache / hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    network, saved = load_or_train(
        folder, key, training_data, steps, batch_size, seed, device, progress, key["convolutions"]
    )
    record.update(folder=str(folder), training={k: v for k, v in saved.items() if k != "key"})
    return Judges(schema, network, image_format, record, builtin)
