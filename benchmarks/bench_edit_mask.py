"""Does the model's own edit mask (``edit_mask``) find the pixels an edit truly changes?

On the built-in digits the exact counterfactual tells which pixels an edit changes (those whose
colour moves by more than 30 in RGB sum). For a trained generator this compares, for background
and foreground colour edits of test digits (each to the next colour of its palette), the masks
``edit_mask`` makes with those pixels: coverage, the true share, and their IoU. Three ways of
summing the per-level prediction differences are compared: as they are (what cfgen does), as
changes of the predicted clean image (scaled by sqrt((1 - a_t) / a_t)), and each level normalised.

    python benchmarks/bench_edit_mask.py --generator GEN --data DATA [--images 24]

Writes benchmarks/results/edit-mask.json.
"""

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import machine

from cfgen.data.images import load_images
from cfgen.data.table import read_imagefolder
from cfgen.data.tensors import to_model_range
from cfgen.datasets.colored_mnist.rendering import render_counterfactual
from cfgen.generator.inference import InferenceSettings, otsu_threshold
from cfgen.generator.model import Generator, predicted_clean
from cfgen.generator.pipeline import CounterfactualPipeline
from cfgen.io import write_json

RESULT = Path(__file__).resolve().parent / "results" / "edit-mask.json"
DEPTHS = {"bg_color": 1.0, "fg_color": 0.6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", required=True)
    parser.add_argument("--data", required=True, help="the built-in dataset the generator was trained on")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = Generator.load(args.generator)
    pipeline = CounterfactualPipeline.from_generator(generator)
    table = read_imagefolder(args.data)
    rows = np.flatnonzero(table.column("split") == "test")[: args.images]
    sources = table.select(rows)
    uint8 = load_images(sources.image_paths, generator.image_format)
    images, factual = to_model_range(uint8), generator.conditions(sources)
    alphas, prediction_type = generator.scheduler.alphas_cumprod, generator.scheduler.config.prediction_type
    results = {}
    for attribute, depth in DEPTHS.items():
        column, values = generator.schema.names.index(attribute), generator.schema[attribute].values
        target = factual.clone()
        target[:, column] = (factual[:, column] + 1) % len(values)
        targets = [{attribute: values[int(code)]} for code in target[:, column]]
        pairs = zip(rows, targets, strict=True)
        exact = np.stack([render_counterfactual(args.data, int(row), edit) for row, edit in pairs])
        truth = torch.from_numpy(np.abs(exact.astype(int) - uint8.astype(int)).sum(-1) > 30)[:, None]
        settings = InferenceSettings(steps=20, inversion_depth=depth, guidance={attribute: 3.0}, localize=True)
        path = pipeline.inversion_path(images, factual, settings)
        for weighting in ("noise", "clean image", "normalised"):
            difference = torch.zeros_like(images[:, :1])
            with torch.inference_mode():
                for latent, t in zip(path.latents[1:], pipeline.inversion_timesteps(settings), strict=True):
                    predicted = generator.predict(torch.cat([latent, latent]), t, torch.cat([factual, target]))
                    before, after = predicted.chunk(2)
                    level = (after - before).abs().mean(1, keepdim=True)
                    if weighting == "clean image":  # the difference of the clean images they imply
                        clean = [predicted_clean(p, latent, alphas[int(t)], prediction_type) for p in (before, after)]
                        level = (clean[1] - clean[0]).abs().mean(1, keepdim=True)
                    elif weighting == "normalised":
                        level = level / level.mean((1, 2, 3), keepdim=True)
                    difference += level
            smooth = F.avg_pool2d(difference, 3, stride=1, padding=1, count_include_pad=False)
            mask = smooth > otsu_threshold(smooth)
            iou = (mask & truth).sum((1, 2, 3)) / (mask | truth).sum((1, 2, 3)).clamp(min=1)
            results[f"{attribute}|{weighting}"] = {
                "coverage": float(mask.float().mean()),
                "changed_by_exact_edit": float(truth.float().mean()),
                "iou": float(iou.mean()),
            }
            print(attribute, weighting, {k: round(v, 3) for k, v in results[f"{attribute}|{weighting}"].items()})
    write_json(RESULT, {"benchmark": "edit mask", "machine": machine(), "settings": vars(args), "results": results})


if __name__ == "__main__":
    main()
