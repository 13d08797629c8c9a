"""What limits cf-reg with generated counterfactuals: the number of good pairs, or their pixels.

Takes a finished ``cfgen pipeline`` run on built-in data (its data/, counterfactuals/, exact/ and
generator/ folders) and trains cf-reg as the run did (its epochs, seeds and pair share) on subsets
of its edits:

    generated, all               what the run's cf-reg classifier saw
    generated, accepted          the edits the evaluation judges accept: the target reached and every
                                 other variable read as on the source (an oracle filter: it uses
                                 built-in knowledge, so it bounds what any filter could buy)
    exact, all                   the exact counterfactuals of the same sources and targets
    exact, of the accepted       ... of the accepted sources only: same pairs as "generated, accepted",
                                 perfect pixels
    exact, of the rejected       ... of the others
    generated, twice the sources  the run's generator and inference settings, twice the edits
    generated, twice the steps    ... the same edits at twice the DDIM steps (both levers cost
                                  twice the generation time)

It also trains judges the way a method could, on the run's confounded training images only, and
reports the share of the exact counterfactuals they accept: whether such judges could filter.

    python benchmarks/bench_pairs.py --run RUN_FOLDER [--threads 2]

Writes benchmarks/results/pairs.json (one entry per run folder).
"""

import argparse
import csv
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import machine

from cfgen.classifier.config import ClassifierConfig
from cfgen.classifier.training import train_classifiers
from cfgen.counterfactuals.generation import generate_counterfactuals
from cfgen.data.images import check_images, load_images
from cfgen.data.schema import Schema
from cfgen.data.table import METADATA_FILE, MetadataTable, read_imagefolder
from cfgen.generator.model import CONFIG_FILE
from cfgen.io import write_json
from cfgen.judges import Judges, load_or_train_judges
from cfgen.judges.reading import default_judge_cache
from cfgen.judges.training import train_judges

RESULTS = Path(__file__).resolve().parent / "results" / "pairs.json"


def accepted(judges: Judges, schema: Schema, edits: MetadataTable, images: np.ndarray) -> np.ndarray:
    """Rows whose every variable reads as the row says: the target for the edited one, the factual value otherwise."""
    read = judges(images)
    keep = np.ones(len(edits), dtype=bool)
    for name, codes in read.items():
        keep &= codes == schema[name].encode(edits.column(name))
    return keep


def subset(folder: Path, keep: np.ndarray, out: Path) -> Path:
    """A counterfactual folder holding the rows of ``folder`` where ``keep`` (the images linked, not copied)."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(folder, out, ignore=shutil.ignore_patterns("images", METADATA_FILE))
    (out / "images").symlink_to(folder.resolve() / "images")
    with (folder / METADATA_FILE).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    with (out / METADATA_FILE).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(row for row, kept in zip(rows, keep, strict=True) if kept)
    return out


def cf_reg_accuracy(run: Path, settings: dict[str, Any], label: str, counterfactuals: Path, out: Path) -> float:
    """Unconfounded test accuracy of cf-reg trained as the run trained it, with ``counterfactuals``."""
    shutil.rmtree(out, ignore_errors=True)
    config = ClassifierConfig(
        data=str(run / "data"), method="cf-reg", out=str(out), label=label, spurious=tuple(settings["spurious"]),
        counterfactuals=(str(counterfactuals),), epochs=settings["epochs"], seeds=tuple(settings["seeds"]),
        pair_share=settings["pair_share"],
    )  # fmt: skip
    return train_classifiers(config)["splits"]["test"]["accuracy"]["mean"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a finished cfgen pipeline run on built-in data")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "cfgen-bench-pairs"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run, work = Path(args.run).resolve(), Path(args.work)
    settings = json.loads((run / "run.json").read_text())["config"]
    schema = Schema.from_dict(json.loads((run / "generator" / CONFIG_FILE).read_text())["schema"])
    data = read_imagefolder(run / "data")
    generated, exact = read_imagefolder(run / "counterfactuals"), read_imagefolder(run / "exact")
    same_plan = np.array_equal(generated.column("cf_source_row"), exact.column("cf_source_row")) and all(
        np.array_equal(generated.column(name), exact.column(name)) for name in schema.names
    )
    if not same_plan:
        sys.exit(f"{run}: counterfactuals/ and exact/ do not edit the same sources to the same targets")

    started = time.perf_counter()
    evaluation = load_or_train_judges(data, schema, default_judge_cache(), settings["judge_steps"])
    train = data.split("train")
    image_format = check_images(train)
    generated_images = load_images(generated.image_paths, image_format)
    exact_images = load_images(exact.image_paths, image_format)
    good = accepted(evaluation, schema, generated, generated_images)
    codes = np.stack([v.encode(train.column(v.name)) for v in schema.variables], axis=1)
    counts = [v.num_values for v in schema.variables]
    images = load_images(train.image_paths, image_format)
    network, _ = train_judges(images, codes, schema.names, counts, settings["judge_steps"], batch_size=128)
    method_judges = Judges(schema, network, image_format, {"pixel": [], "learned": schema.names})
    label = schema.label.name
    subsets = {
        "generated, all": (run / "counterfactuals", np.ones(len(generated), dtype=bool)),
        "generated, accepted": (run / "counterfactuals", good),
        "exact, all": (run / "exact", np.ones(len(exact), dtype=bool)),
        "exact, of the accepted": (run / "exact", good),
        "exact, of the rejected": (run / "exact", ~good),
    }
    rows = {}
    for name, (folder, keep) in subsets.items():
        slug = name.replace(", ", "-").replace(" ", "-")
        accuracy = cf_reg_accuracy(
            run, settings, label, subset(folder, keep, work / f"cf-{slug}"), work / f"clf-{slug}"
        )
        rows[name] = {"pairs": int(keep.sum()), "cf_reg_test_accuracy": accuracy}
        print(f"{name}: {int(keep.sum())} pairs, cf-reg unconfounded test accuracy {accuracy:.3f}", flush=True)
    generation = json.loads((run / "counterfactuals" / "run.json").read_text())["config"]
    levers = {
        "generated, twice the sources": (2 * generation["limit"], generation["steps"]),
        "generated, twice the steps": (generation["limit"], 2 * generation["steps"]),
    }
    for name, (limit, steps) in levers.items():
        folder = work / f"generated-{limit}-{steps}"
        shutil.rmtree(folder, ignore_errors=True)
        generating = time.perf_counter()
        generate_counterfactuals(
            run / "data", generation["intervention"], folder, generator=run / "generator", split="train",
            limit=limit, seed=generation["seed"], steps=steps, progress=False,
        )  # fmt: skip
        seconds = round(time.perf_counter() - generating, 1)
        accuracy = cf_reg_accuracy(run, settings, label, folder, work / f"clf-generated-{limit}-{steps}")
        rows[name] = {
            "pairs": limit,
            "ddim_steps": steps,
            "generation_seconds": seconds,
            "cf_reg_test_accuracy": accuracy,
        }
        print(f"{name}: {limit} pairs, {steps} steps ({seconds} s), cf-reg accuracy {accuracy:.3f}", flush=True)
    mse = ((generated_images / 255 - exact_images / 255) ** 2).mean(axis=(1, 2, 3))
    results = (
        json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"benchmark": __doc__.splitlines()[0], "runs": {}}
    )
    results["runs"][str(run)] = {
        "settings": {key: settings[key] for key in ("preset", "epochs", "seeds", "pair_share", "judge_steps")},
        "subsets": rows,
        "mse_to_exact": {"accepted": float(mse[good].mean()), "rejected": float(mse[~good].mean())},
        "method_judges_accept_exact": float(accepted(method_judges, schema, exact, exact_images).mean()),
        "seconds": round(time.perf_counter() - started, 1),
        "machine": machine(),
        "command": " ".join(["python", *sys.argv]),
    }
    write_json(RESULTS, results)
    share = results["runs"][str(run)]["method_judges_accept_exact"]
    print(f"judges trained on the confounded training images accept {share:.3f} of the exact counterfactuals")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
