"""Evaluation judges of the built-in digits: how well they read clean source images, and what they cost.

"Digit kept" and "thickness kept" can show no more than the judges read on the unedited sources, so
their accuracy there bounds every preservation figure (targets: digit >= 0.985, thickness >= 0.97).
This trains the judges ``cfgen evaluate-counterfactuals`` uses on the generator benchmark's data
(digit -> fg_color at 0.99, 6,000 training images, 300 unconfounded test images by default), with a fresh
cache, and reads the test images and the exact fg_color edits of them.

``--trained-on data`` trains instead the judges a user's dataset gets: on the confounded training
split itself (group-balanced draws in a product with the confounding, every variable learned), which
shows how far the defences against the shortcut carry where nothing is known about the rendering.

    python benchmarks/bench_judges.py [--judge-steps 2000] [--trained-on rendered|data] [--test-images 300]
        [--threads 2] [--results R.json]

Writes benchmarks/results/judges.json (or --results; one entry per judge-steps setting and training data).
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import load_results, machine

from cfgen.counterfactuals.generation import generate_counterfactuals
from cfgen.data.images import check_images, load_images
from cfgen.data.schema import Schema
from cfgen.data.table import MetadataTable, read_imagefolder
from cfgen.datasets.colored_mnist.rendering import ColoredMNISTConfig, make_colored_mnist
from cfgen.io import write_json
from cfgen.judges import DEFAULT_JUDGE_BATCH_SIZE, DEFAULT_JUDGE_STEPS, Judges, load_or_train_judges, train_judges

RESULT = Path(__file__).resolve().parent / "results" / "judges.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--judge-steps", type=int, default=DEFAULT_JUDGE_STEPS)
    parser.add_argument("--trained-on", choices=("rendered", "data"), default="rendered")
    parser.add_argument("--test-images", type=int, default=300, help="unconfounded test digits read")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "cfgen-bench-judges"))
    parser.add_argument("--results", type=Path, default=RESULT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work) / f"test-{args.test_images}"
    sizes = {"train": 6000, "validation": 0, "test": args.test_images, "test_anti": 0}
    config = ColoredMNISTConfig(strength=0.99, sizes=sizes, seed=0)
    data = work / "data"
    if not data.exists():
        make_colored_mnist(config, data)
    exact = work / "exact"
    if not exact.exists():
        generate_counterfactuals(data, "fg_color=random", exact, split="test", progress=False)
    table = read_imagefolder(data)
    schema = table.schema()
    started = time.perf_counter()
    if args.trained_on == "data":
        judges = data_trained_judges(table, schema, args.judge_steps)
    else:
        judges = load_or_train_judges(table, schema, work / f"cache-{time.time_ns()}", args.judge_steps, progress=True)
    seconds = time.perf_counter() - started

    def accuracy(folder: Path, rows: np.ndarray | None = None) -> dict[str, float]:
        part = read_imagefolder(folder)
        rows = np.flatnonzero(part.column("split") == "test") if rows is None else rows
        read = judges(load_images(part.image_paths[rows], judges.image_format))
        truth = {name: schema[name].encode(part.column(name)[rows]) for name in read}
        return {name: float((codes == truth[name]).mean()) for name, codes in read.items()}

    edits = read_imagefolder(exact)
    entry = {
        "judge_steps": args.judge_steps,
        "trained_on": args.trained_on,
        "train_seconds": round(seconds, 1),
        "sources": accuracy(data),
        "exact_fg_color_edits": accuracy(exact, np.arange(len(edits))),
        "record": judges.record,
    }
    results = load_results(args.results, {"data": config.to_dict()}, "evaluation judges of the built-in digits")
    results["machine"] = machine()
    key = str(args.judge_steps) if args.trained_on == "rendered" else f"{args.judge_steps}, data"
    results["entries"][key] = entry
    write_json(args.results, results)
    print({k: entry[k] for k in ("judge_steps", "trained_on", "train_seconds", "sources", "exact_fg_color_edits")})


def data_trained_judges(table: MetadataTable, schema: Schema, steps: int) -> Judges:
    """Judges of every discrete variable trained on the training split, as a dataset with no built-in
    knowledge gets them (``cfgen.judges.reading``), without the cache."""
    rows = table.split(table.training_split)
    variables = [v for v in schema.variables if v.is_discrete]
    image_format = check_images(rows)
    codes = np.stack([v.encode(rows.column(v.name)) for v in variables], axis=1)
    network, training = train_judges(
        load_images(rows.image_paths, image_format), codes, [v.name for v in variables],
        [v.num_values for v in variables], steps, DEFAULT_JUDGE_BATCH_SIZE, progress=True,
    )  # fmt: skip
    record = {"pixel": [], "learned": [v.name for v in variables], "training": training}
    return Judges(schema, network, image_format, record)


if __name__ == "__main__":
    main()
