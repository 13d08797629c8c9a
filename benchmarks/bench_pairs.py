"""What limits cf-reg with generated counterfactuals: the number of good pairs, or their pixels.

Takes a finished ``cfgen pipeline`` run on built-in data (its data/, counterfactuals/, exact/ and
generator/ folders) and trains cf-reg as the run did (its epochs, seeds, pair share and penalty) on
subsets of its edits:

    generated, all               what the run's cf-reg classifier saw
    generated, accepted          the edits the evaluation judges accept: the target reached and every
                                 other variable read as on the source (an oracle filter: it uses
                                 built-in knowledge, so it bounds what any filter could buy)
    exact, all                   the exact counterfactuals of the same sources and targets
    exact, of the accepted       ... of the accepted sources only: same pairs as "generated, accepted",
                                 perfect pixels
    exact, of the rejected       ... of the others
    generated, twice the sources  the run's generator and inference settings, twice the edits
    generated, twice the steps    ... the same edits at twice the DDIM steps
    generated, edited twice       ... each edit made again on its own output, from the source's
                                  values to the same target (the three levers cost twice the
                                  generation time)

With ``--parts guidance``, the run's edits made again at other guidance weights, from the first
decoding step or from later ones (``GUIDANCE``, InferenceSettings.guidance_start), each with its
judges' acceptance, colour progress (below) and cf-reg. ``--parts negatives`` does the same at
guidance 2, 3 and 5 pushing away from each negative (InferenceSettings.negative: the attribute
dropped, or the source's value).

With ``--parts settings``, cf-reg on the run's generated and exact counterfactuals with other
weights, distances and layers of its penalty (``SETTINGS``): how much the classifier can learn from
few and from imperfect pairs. With ``--parts hybrids``, images that take one thing from the generated
counterfactual and the rest from the exact one. Built-in data draw each pixel as bg + alpha (fg -
bg); a generated image is read the same way, with alpha its stroke map (distance from the frame
colour, what the judges read) and fg the one colour that fits best, plus a remainder that neither
explains:

    hybrid, generated shape        the generated stroke map in the exact colours
    hybrid, generated colour       the exact stroke in the generated image's fitted stroke colour
    hybrid, generated remainder    the exact image plus the generated one's remainder (stray and
                                   source colour, blotches, background noise)

Beside each set of images it reports how far their fitted stroke colour went from the source's
colour to the target's (0 kept, 1 reached; the exact counterfactuals score 0.98, as the stroke
map is not quite the drawn alpha).

It also trains judges the way a method could, on the run's confounded training images only, and
reports the share of the exact counterfactuals they accept: whether such judges could filter.

    python benchmarks/bench_pairs.py --run RUN_FOLDER [--parts subsets,levers,guidance,negatives,settings,hybrids]
        [--cf-weight W] [--threads 2]

Writes benchmarks/results/pairs.json (one entry per run folder and penalty weight given).
"""

import argparse
import csv
import json
import shutil
import sys
import tempfile
import time
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import machine
from PIL import Image

from cfgen.classifier.config import ClassifierConfig
from cfgen.classifier.training import train_classifiers
from cfgen.counterfactuals.generation import generate_counterfactuals
from cfgen.data.images import check_images, load_images
from cfgen.data.schema import Schema
from cfgen.data.table import METADATA_FILE, MetadataTable, read_imagefolder
from cfgen.datasets.colored_mnist.readers import stroke_map
from cfgen.datasets.colored_mnist.rendering import BG_COLORS, FG_COLORS
from cfgen.generator.inference import NEGATIVES
from cfgen.generator.model import CONFIG_FILE
from cfgen.generator.pipeline import CounterfactualPipeline
from cfgen.io import write_json
from cfgen.judges import Judges, load_or_train_judges
from cfgen.judges.reading import default_judge_cache
from cfgen.judges.training import train_judges

RESULTS = Path(__file__).resolve().parent / "results" / "pairs.json"
PARTS = {"subsets", "levers", "guidance", "negatives", "settings", "hybrids"}
GUIDANCE = ((3.0, 0.0), (5.0, 0.0), (8.0, 0.0), (12.0, 0.5), (20.0, 0.6))  # (weight, start)
NEGATIVE_GUIDANCE = (2.0, 3.0, 5.0)  # weights tried with each negative
SETTINGS = (
    *({"cf_weight": weight} for weight in (1.0, 3.0, 10.0, 30.0, 100.0)),
    {"cf_layer": "logits"},
    {"cf_distance": "l2"},
)
PENALTY = ("cf_weight", "cf_distance", "cf_layer")  # what a run's cf-reg classifier records of its penalty


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


def palette(names: np.ndarray, colours: dict[str, tuple[int, int, int]]) -> np.ndarray:
    """(N, 1, 1, 3) float RGB of the palette names ``names``."""
    return np.array([colours[name] for name in names], dtype=np.float64)[:, None, None, :]


def own_colour(images: np.ndarray, background: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """(N, 1, 1, 3) the colour c that best explains each image as background + alpha (c - background)."""
    offset = (alpha * (images - background)).sum((1, 2), keepdims=True)
    return background + offset / np.maximum((alpha**2).sum((1, 2), keepdims=True), 1e-6)


def colour_progress(edits: MetadataTable, images: np.ndarray) -> float:
    """Mean fraction of the way from the source's stroke colour to the target's that the images' fitted
    stroke colour went (projected on that line)."""
    background = palette(edits.column("bg_color"), BG_COLORS)
    target = palette(edits.column("fg_color"), FG_COLORS)[:, 0, 0]
    source = palette(np.array([value.partition("=")[2] for value in edits.column("cf_factual")]), FG_COLORS)[:, 0, 0]
    colour = own_colour(images.astype(np.float64), background, stroke_map(images) / 255.0)[:, 0, 0]
    progress = ((colour - source) * (target - source)).sum(1) / ((target - source) ** 2).sum(1)
    return float(progress.mean())


def hybrids(edits: MetadataTable, generated: np.ndarray, exact: np.ndarray) -> dict[str, np.ndarray]:
    """uint8 images mixing generated and exact counterfactuals of the same edits (see the module docstring):
    each generated image read as background + alpha (colour - background) + remainder, alpha its stroke map."""
    background = palette(edits.column("bg_color"), BG_COLORS)
    target = palette(edits.column("fg_color"), FG_COLORS)
    shape_generated, shape_exact = stroke_map(generated) / 255.0, stroke_map(exact) / 255.0
    generated, exact = generated.astype(np.float64), exact.astype(np.float64)
    colour = own_colour(generated, background, shape_generated)
    remainder = generated - (background + shape_generated * (colour - background))
    mixed = {
        "hybrid, generated shape": background + shape_generated * (target - background),
        "hybrid, generated colour": background + shape_exact * (colour - background),
        "hybrid, generated remainder": exact + remainder,
    }
    return {name: image.round().clip(0, 255).astype(np.uint8) for name, image in mixed.items()}


def write_like(folder: Path, images: np.ndarray, out: Path) -> Path:
    """A copy of counterfactual ``folder`` whose images are ``images`` (in its metadata's row order)."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(folder, out, ignore=shutil.ignore_patterns("images"))
    for path, image in zip(read_imagefolder(folder).image_paths, images, strict=True):
        target = out / Path(path).relative_to(folder.resolve())
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(target)
    return out


def edited_again(run: Path, edits: MetadataTable, images: np.ndarray) -> np.ndarray:
    """The run's edits made once more on ``images`` (its edits' outputs): from each source's factual
    values to the same target, with the generator's saved inference settings."""
    pipe = CounterfactualPipeline.load(run / "generator")
    names = pipe.model.schema.names
    intervened = set(edits.column("cf_intervened"))
    if len(intervened) != 1:
        sys.exit(f"{run}: edits of {sorted(intervened)}; edited twice takes edits of one attribute")
    (edited,) = intervened
    factual = [
        {name: str(edits.column(name)[row]) for name in names} | {edited: value.partition("=")[2]}
        for row, value in enumerate(edits.column("cf_factual"))
    ]
    targets, out = edits.column(edited), np.empty_like(images)
    tensors = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    for value in np.unique(targets):
        for rows in np.array_split(np.flatnonzero(targets == value), max(1, (targets == value).sum() // 64)):
            result = pipe(tensors[rows], [factual[row] for row in rows], f"{edited}={value}", output_type="np")
            out[rows] = (np.asarray(result.images) * 255).round().clip(0, 255).astype(np.uint8)
    return out


def cf_reg_accuracy(
    run: Path, settings: dict[str, Any], label: str, counterfactuals: Path, out: Path, **options: Any
) -> float:
    """Unconfounded test accuracy of cf-reg trained as the run trained it, with ``counterfactuals``
    (``options``: other ``ClassifierConfig`` values)."""
    shutil.rmtree(out, ignore_errors=True)
    options = {name: settings[name] for name in PENALTY} | options
    config = ClassifierConfig(
        data=str(run / "data"), method="cf-reg", out=str(out), label=label, spurious=tuple(settings["spurious"]),
        counterfactuals=(str(counterfactuals),), epochs=settings["epochs"], seeds=tuple(settings["seeds"]),
        pair_share=settings["pair_share"], **options,
    )  # fmt: skip
    return train_classifiers(config)["splits"]["test"]["accuracy"]["mean"]


def slug(name: str) -> str:
    """A folder name for a row's name."""
    return name.replace(", ", "-").replace(" ", "-")


def images_row(
    run: Path,
    settings: dict[str, Any],
    label: str,
    work: Path,
    name: str,
    edits: MetadataTable,
    folder: Path,
    images: np.ndarray,
    exact: np.ndarray,
) -> dict[str, Any]:
    """cf-reg trained with the counterfactual ``folder`` (``images``: the run's ``edits``, in their order), with
    how far its images are from the exact ones."""
    accuracy = cf_reg_accuracy(run, settings, label, folder, work / f"clf-{slug(name)}")
    mse = float(((images / 255 - exact / 255) ** 2).mean())
    print(f"{name}: MSE to exact {mse:.4f}, cf-reg unconfounded test accuracy {accuracy:.3f}", flush=True)
    return {
        "pairs": len(images), "mse_to_exact": mse, "colour_progress": colour_progress(edits, images),
        "cf_reg_test_accuracy": accuracy,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a finished cfgen pipeline run on built-in data")
    parser.add_argument("--parts", default="subsets,levers", help="comma-separated, of " + ", ".join(sorted(PARTS)))
    parser.add_argument("--cf-weight", type=float, help="cf-reg's penalty weight (default: the run's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "cfgen-bench-pairs"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run, work = Path(args.run).resolve(), Path(args.work)
    parts = set(args.parts.split(","))
    if parts - PARTS:
        sys.exit(f"--parts: unknown {', '.join(sorted(parts - PARTS))}; choose from {', '.join(sorted(PARTS))}")
    penalty = json.loads((run / "classifiers" / "cf-reg" / "run.json").read_text())["config"]
    settings = json.loads((run / "run.json").read_text())["config"] | {name: penalty[name] for name in PENALTY}
    entry = str(run)  # rows of another penalty weight go to an entry of their own
    if args.cf_weight is not None:
        settings["cf_weight"] = args.cf_weight
        entry += f", cf-reg weight {args.cf_weight:g}"
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
    previous = json.loads(RESULTS.read_text())["runs"].get(entry, {}) if RESULTS.is_file() else {}
    rows = previous.get("subsets", {})
    if "subsets" in parts:
        for name, (folder, keep) in subsets.items():
            accuracy = cf_reg_accuracy(
                run, settings, label, subset(folder, keep, work / f"cf-{slug(name)}"), work / f"clf-{slug(name)}"
            )
            rows[name] = {"pairs": int(keep.sum()), "cf_reg_test_accuracy": accuracy}
            print(f"{name}: {int(keep.sum())} pairs, cf-reg unconfounded test accuracy {accuracy:.3f}", flush=True)
    if "hybrids" in parts:
        for name, images in hybrids(generated, generated_images, exact_images).items():
            folder = write_like(run / "counterfactuals", images, work / f"cf-{slug(name)}")
            rows[name] = images_row(run, settings, label, work, name, generated, folder, images, exact_images)
    generation = json.loads((run / "counterfactuals" / "run.json").read_text())["config"]
    levers = {
        "generated, twice the sources": (2 * generation["limit"], generation["steps"]),
        "generated, twice the steps": (generation["limit"], 2 * generation["steps"]),
    }
    for name, (limit, steps) in levers.items() if "levers" in parts else ():
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
    if "levers" in parts:
        generating = time.perf_counter()
        again = edited_again(run, generated, generated_images)
        seconds = round(time.perf_counter() - generating, 1)
        name = "generated, edited twice"
        folder = write_like(run / "counterfactuals", again, work / f"cf-{slug(name)}")
        row = images_row(run, settings, label, work, name, generated, folder, again, exact_images)
        rows[name] = {"generation_seconds": seconds} | row
    points = [(weight, start, "dropped") for weight, start in GUIDANCE] if "guidance" in parts else []
    points += list(product(NEGATIVE_GUIDANCE, (0.0,), NEGATIVES)) if "negatives" in parts else []
    for weight, start, negative in dict.fromkeys(points):  # the parts share some points
        name = f"generated, guidance {weight:g} from {start:.0%} of the steps"
        name += ", away from the source value" if negative == "source" else ""  # rows before the choice: dropped
        folder = work / f"cf-{slug(name)}"
        shutil.rmtree(folder, ignore_errors=True)
        # before a late start conditioned on the target, as these rows always were (their names say nothing of it)
        generate_counterfactuals(
            run / "data", generation["intervention"], folder, generator=run / "generator", split="train",
            limit=generation["limit"], seed=generation["seed"], steps=generation["steps"], guidance=str(weight),
            guidance_start=start, negative=negative, before_guidance="target", progress=False,
        )  # fmt: skip
        images = load_images(read_imagefolder(folder).image_paths, image_format)
        share = float(accepted(evaluation, schema, generated, images).mean())
        row = images_row(run, settings, label, work, name, generated, folder, images, exact_images)
        rows[name] = {"accepted": share} | row
    for kind in ("generated", "exact") if "settings" in parts else ():
        for options in SETTINGS:
            name = f"{kind}, cf-reg " + ", ".join(f"{key}={value}" for key, value in options.items())
            folder = run / ("counterfactuals" if kind == "generated" else "exact")
            accuracy = cf_reg_accuracy(run, settings, label, folder, work / "clf-settings", **options)
            rows[name] = {"pairs": len(generated), "cf_reg_test_accuracy": accuracy}
            print(f"{name}: cf-reg accuracy {accuracy:.3f}", flush=True)
    mse = ((generated_images / 255 - exact_images / 255) ** 2).mean(axis=(1, 2, 3))
    results = (
        json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"benchmark": __doc__.splitlines()[0], "runs": {}}
    )
    results["runs"][entry] = {
        "settings": {
            key: settings[key] for key in ("preset", "epochs", "seeds", "pair_share", "judge_steps", *PENALTY)
        },
        "subsets": rows,
        "mse_to_exact": {"accepted": float(mse[good].mean()), "rejected": float(mse[~good].mean())},
        "colour_progress": {
            "generated": colour_progress(generated, generated_images),
            "exact": colour_progress(exact, exact_images),
        },
        "method_judges_accept_exact": float(accepted(method_judges, schema, exact, exact_images).mean()),
        "seconds": round(time.perf_counter() - started, 1),
        "machine": machine(),
        "command": " ".join(["python", *sys.argv]),
    }
    write_json(RESULTS, results)
    share = results["runs"][entry]["method_judges_accept_exact"]
    print(f"judges trained on the confounded training images accept {share:.3f} of the exact counterfactuals")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
