"""The field's soundness figures of a counterfactual generator, beside effectiveness and preservation.

- composition: editing an image to its own values (the null intervention) must leave it as it is,
  however often it is done: mean L1 pixel distance (images in [0, 1]) to the source after 1 and
  after 10 null edits in a row;
- reversibility: editing a counterfactual back to the source's values must give the source: mean
  L1 distance of do(a') then do(a) to the source;
- realism: the Frechet distance between the features of real images and of the counterfactuals,
  in the evaluation judges' feature space (so nothing is downloaded); 0 for the same distribution.

Any deterministic editing function fits ``Edit``: a trained generator's pipeline (its noise is
drawn from each image's content), or the exact renderer of the built-in data, for which
composition and reversibility are 0 by construction.
"""

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from scipy import linalg

from cfgen.data.tensors import to_model_range, to_uint8
from cfgen.generator.inference import SAVED_BEFORE, InferenceSettings
from cfgen.generator.model import CONFIG_FILE
from cfgen.generator.pipeline import CounterfactualPipeline
from cfgen.io import RUN_FILE

# (uint8 N x H x W x C images, their values, the values to set) -> the edited uint8 images
Edit = Callable[[np.ndarray, Sequence[dict[str, str]], Sequence[dict[str, str]]], np.ndarray]
HORIZONS = (1, 10)


def l1(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per image, the mean absolute difference of two uint8 image batches, on the [0, 1] scale."""
    difference = np.abs(a.astype(np.float32) - b.astype(np.float32)) / 255
    return difference.reshape(len(a), -1).mean(axis=1)


def composition(edit: Edit, images: np.ndarray, values: Sequence[dict[str, str]]) -> dict[str, np.ndarray]:
    """Per image, the L1 distance to the source after each horizon of null edits (edited to its own values).

    Edits are deterministic, so once a null edit returns its input unchanged every later one would
    return it again: the remaining horizons are read off without editing (a null edit within the
    ``edit`` mask, empty where nothing is to change, gets there at once)."""
    found, current = {}, images
    for step in range(1, max(HORIZONS) + 1):
        edited = edit(current, values, values)
        if np.array_equal(edited, current):
            return found | {str(horizon): l1(current, images) for horizon in HORIZONS if horizon >= step}
        current = edited
        if step in HORIZONS:
            found[str(step)] = l1(current, images)
    return found


def reversibility(
    edit: Edit, counterfactuals: np.ndarray, set_values: Sequence[dict[str, str]], sources: np.ndarray,
    source_values: Sequence[dict[str, str]],
) -> np.ndarray:  # fmt: skip
    """Per image, the L1 distance to its source of the counterfactual edited back to the source's values."""
    return l1(edit(counterfactuals, set_values, source_values), sources)


def frechet_distance(real: np.ndarray, generated: np.ndarray) -> float:
    """The Frechet distance between Gaussians fitted to two (N, D) feature sets."""
    mean_real, mean_generated = real.mean(axis=0), generated.mean(axis=0)
    cov_real, cov_generated = np.cov(real, rowvar=False), np.cov(generated, rowvar=False)
    root = np.real(linalg.sqrtm(cov_real @ cov_generated))  # drop sqrtm's imaginary rounding noise
    distance = ((mean_real - mean_generated) ** 2).sum() + np.trace(cov_real + cov_generated - 2 * root)
    return float(max(distance, 0.0))


def soundness(
    edit: Edit,
    sources: np.ndarray,
    source_values: Sequence[dict[str, str]],
    counterfactuals: np.ndarray,
    set_values: Sequence[dict[str, str]],
) -> dict[str, np.ndarray]:
    """Per counterfactual (aligned with its source): composition at each horizon, and reversibility."""
    composed = composition(edit, sources, source_values)
    found = {f"composition_l1_{horizon}": values for horizon, values in composed.items()}
    found["reversibility_l1"] = reversibility(edit, counterfactuals, set_values, sources, source_values)
    return found


def generator_edit(counterfactual_folder: str | Path, batch_size: int = 64) -> Edit | None:
    """The edit that made a counterfactual folder, when a trained generator made it and is still there:
    its pipeline with the folder's inference settings (``run.json``); None for exact renders."""
    record = Path(counterfactual_folder) / RUN_FILE
    config = json.loads(record.read_text())["config"] if record.is_file() else {}
    folder = Path(config.get("generator", ""))
    if not (folder / CONFIG_FILE).is_file():
        return None
    pipeline = CounterfactualPipeline.load(folder)
    config = SAVED_BEFORE | config  # folders made before some settings were choices
    settings = InferenceSettings(
        config["steps"], config["inversion_depth"], config["guidance"], config["localize"],
        config["inversion"], config["guidance_start"], config["negative"], config["direction"],
        config["before_guidance"],
    )  # fmt: skip

    def edit(images: np.ndarray, values: Sequence[dict[str, str]], targets: Sequence[dict[str, str]]) -> np.ndarray:
        edited = []
        for start in range(0, len(images), batch_size):
            part = slice(start, start + batch_size)
            sources = to_model_range(images[part])
            factual, target = pipeline.prepare_conditions(values[part]), pipeline.prepare_conditions(targets[part])
            with torch.inference_mode():
                path = pipeline.inversion_path(sources, factual, settings)
                edited.append(to_uint8(pipeline.edit(path, factual, target, settings)))
        return np.concatenate(edited)

    return edit
