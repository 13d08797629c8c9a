"""How well generators see the clean image at each noise level: the error of the clean image their
prediction implies, beside the error of the average image.

An edit that inverts to depth d decodes from noise level d x T, so what a model makes of the image
at the highest levels decides what a deep edit (a background colour) can do. Each generator
(a finished ``cfgen pipeline`` run's, or a generator folder) is given the first --images validation
images of its data, noised to each timestep with the same noise, and their factual rows; the clean
estimate (``predicted_clean``) is scored by its mean squared error on the [-1, 1] scale, clipped to
that range, against the error of predicting the average of those images.

    python benchmarks/bench_clean_estimate.py --runs NAME=RUN[,NAME=RUN...] [--images 256] [--results R.json]

Writes benchmarks/results/clean-estimate.json (or --results); one entry per NAME, replaced when measured again.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from common import load_results, machine

from cfgen.data.adapters import open_dataset
from cfgen.data.images import load_images
from cfgen.data.table import SPLIT_COLUMN
from cfgen.data.tensors import to_model_range
from cfgen.generator.model import Generator, predicted_clean
from cfgen.io import write_json

RESULTS = Path(__file__).resolve().parent / "results" / "clean-estimate.json"
TIMESTEPS = (999, 950, 900, 800, 600, 400, 200, 50)


@torch.inference_mode()
def clean_errors(generator: Generator, images: torch.Tensor, conditions: torch.Tensor) -> dict[str, float]:
    """Per timestep, the mean squared error of the clean estimate from the images noised there."""
    alphas = generator.scheduler.alphas_cumprod
    prediction_type = generator.scheduler.config.prediction_type
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    errors = {}
    for t in TIMESTEPS:
        noisy = generator.scheduler.add_noise(images, noise, torch.full((len(images),), t))
        output = generator.predict(noisy, torch.tensor(t), conditions).float()
        clean = predicted_clean(output, noisy, alphas[t], prediction_type).clamp(-1, 1)
        errors[str(t)] = round(float(((clean - images) ** 2).mean()), 4)
    return errors


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, help="NAME=FOLDER,...: pipeline runs or generator folders")
    parser.add_argument("--images", type=int, default=256, help="validation images of each run's data")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results_file = Path(args.results)
    results = load_results(results_file, {"images": args.images, "timesteps": list(TIMESTEPS)}, __doc__.splitlines()[0])
    results["machine"] = machine()
    results["commands"] = [*results.get("commands", []), " ".join(["python", *sys.argv])]
    for entry in args.runs.split(","):
        name, folder = entry.split("=", 1)
        folder = Path(folder).resolve()
        generator_folder = folder / "generator" if (folder / "generator").is_dir() else folder
        generator = Generator.load(generator_folder)
        data = Path(generator.training["data"]["path"])
        table = open_dataset(data)
        rows = np.flatnonzero(table.column(SPLIT_COLUMN) == "validation")[: args.images]
        images = to_model_range(load_images(table.image_paths[rows], generator.image_format))
        average = float(((images.mean(0, keepdim=True) - images) ** 2).mean())
        errors = clean_errors(generator, images, generator.conditions(table.select(rows)))
        results["entries"][name] = {
            "generator": str(generator_folder),
            "prediction_type": generator.scheduler.config.prediction_type,
            "training_steps": generator.training.get("steps"),
            "clean_estimate_mse": errors,
            "average_image_mse": round(average, 4),
        }
        write_json(results_file, results)
        print(
            f"{name}: " + ", ".join(f"t={t} {error:.4f}" for t, error in errors.items()) + f" (average {average:.4f})"
        )
    print(f"wrote {results_file}")


if __name__ == "__main__":
    main()
