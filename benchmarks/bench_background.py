"""Background edits on a user's dataset in the Waterbirds layout: `cfgen pipeline --preset quick` on
synthetic birds (a disc or a triangle, the label y, in a random light colour, place and size) over
land or water backgrounds (the attribute place: green speckle or blue waves, both textures), place
tied to y at --strength in train and validation, independent in test. Nothing in cfgen knows how
these images are drawn: the generator edits `place` with the inference settings it chose on the
validation split, and judges trained on the training split read the edits.

    python benchmarks/bench_background.py            # -> benchmarks/results/background.json,
                                                     #    docs/background-edits.png (the report's grid)
"""

import argparse
import csv
import json
import shutil
import time
from pathlib import Path

import numpy as np
from common import machine
from PIL import Image, ImageDraw

from cfgen.pipeline import run_pipeline

SIZE = 28
SPLITS = {"0": 4000, "1": 500, "2": 1000}  # Waterbirds' split codes: train, validation, test


def background(place: str, rng: np.random.Generator) -> np.ndarray:
    """Land: green speckle; water: blue horizontal waves with a random phase."""
    if place == "0":
        base = np.array([60, 110, 40], dtype=np.float64)
        pixels = base + rng.normal(0, 18, (SIZE, SIZE, 1)) * np.array([0.6, 1.0, 0.4])
    else:
        rows = np.arange(SIZE)[:, None, None]
        wave = np.sin(rows * 0.9 + rng.uniform(0, 2 * np.pi) + 0.4 * np.sin(np.arange(SIZE)[None, :, None] * 0.5))
        pixels = np.array([40, 70, 150], dtype=np.float64) + wave * np.array([10, 18, 30])
    return np.clip(np.broadcast_to(pixels, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)


def bird(y: str, place: str, rng: np.random.Generator) -> Image.Image:
    image = Image.fromarray(background(place, rng))
    draw = ImageDraw.Draw(image)
    radius = rng.uniform(5, 8)
    cx, cy = rng.uniform(radius + 2, SIZE - radius - 2, size=2)
    colour = tuple(int(c) for c in rng.integers(170, 256, size=3))
    if y == "0":  # a landbird: a disc
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour)
    else:  # a waterbird: a triangle
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=colour)
    return image


def write_birds(root: Path, strength: float, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    (root / "birds").mkdir(parents=True)
    rows = []
    for split, count in SPLITS.items():
        for _ in range(count):
            y = str(rng.integers(2))
            tied = split != "2" and rng.random() < strength
            place = y if tied else str(rng.integers(2))
            name = f"birds/{len(rows):05d}.png"
            bird(y, place, rng).save(root / name)
            rows.append({"img_id": len(rows), "img_filename": name, "y": y, "split": split, "place": place})
    with (root / "metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/cfgen-bench-background"))
    parser.add_argument("--strength", type=float, default=0.9, help="how often place follows y in train/validation")
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "background.json")
    parser.add_argument("--grid", type=Path, default=Path(__file__).parents[1] / "docs" / "background-edits.png")
    args = parser.parse_args()

    shutil.rmtree(args.work, ignore_errors=True)
    data = write_birds(args.work / "waterbirds", args.strength, args.seed)
    started = time.perf_counter()
    run = run_pipeline(args.work / "run", data=data, preset=args.preset, seed=args.seed)
    seconds = time.perf_counter() - started
    metrics = json.loads((run / "metrics.json").read_text())
    quality = metrics["counterfactual_quality"]
    read = ("rows", "effectiveness", "preservation", "agreement_with_source", "success")
    edits = {group: {key: quality[group][key] for key in read} for group in ("all", "rare")}
    classifiers = {
        method: {split: figures["accuracy"]["mean"] for split, figures in splits.items()}
        for method, splits in metrics["classifiers"].items()
    }
    result = {
        "benchmark": "background edits, Waterbirds layout",
        "machine": machine(),
        "settings": {"strength": args.strength, "preset": args.preset, "seed": args.seed, "splits": SPLITS},
        "seconds": round(seconds, 1),
        "stage_seconds": metrics["seconds"],
        "inference": metrics["inference"],
        "judge_accuracy_on_sources": quality["judge_accuracy_on_sources"],
        "edits": edits,
        "confounding": metrics["confounding"],
        "classifiers": classifiers,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    shutil.copy(run / "examples.png", args.grid)
    print(json.dumps(result["edits"], indent=2))


if __name__ == "__main__":
    main()
