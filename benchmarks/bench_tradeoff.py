"""The effectiveness-vs-preservation trade-off of edits, and what moves it.

Inference knobs (guidance on the edited attribute, inversion depth) move a generator along one
curve: more guidance or a deeper inversion reaches the target more often and keeps the digit less
often. This benchmark draws that curve for each edited attribute, deconfounding method, training
length and editing procedure (plain, or localized within one of the model's own masks; DDIM or
edit-friendly DDPM inversion), so that a change
shows whether it moves the whole curve or only slides along it.

For each method and number of training steps a quick-preset generator is trained on the generator
benchmark's data (digit -> fg_color at ``--strength``, or the ``--tie`` given, 6,000 training images); it then edits the
unconfounded test images ``ATTRIBUTE=random`` at every (inversion, localize, depth, guidance, guidance
start) of the grid,
and ``evaluate_counterfactuals`` scores the edits against the exact counterfactuals. Figures are
for the rare targets (pairs at most a fifth as frequent in training as independence would make
them; for an attribute untied to the digit, where few edits are rare, every edit):

    effectiveness        the edited image has the target value
    digit agrees         the judges read the same digit as on the source image
    <attribute> kept     each other attribute reads as its factual value
    success              the edit happened and digit and every other attribute stayed
    stroke IoU, width    judge-free: stroke masks against the exact counterfactual's, width error in px
    MSE                  pixel error to the exact counterfactual
    realism, composition, reversibility   the field's soundness figures (evaluate-counterfactuals)

    python benchmarks/bench_tradeoff.py [--tie digit:thickness=0.99] [--attributes fg_color,bg_color]
        [--methods reweight] [--recipes quick,low-noise-x3]
        [--train-steps 400,1000] [--localize no,edit,others] [--inversions ddim,ddpm]
        [--depths 0.4,0.6,0.8] [--guidance 1.5,2,3,5] [--guidance-starts 0,0.5] [--negatives dropped,source]
        [--test-size 200] [--threads 2] [--results R.json] [--figure F.png]

Writes benchmarks/results/generator-tradeoff.json and docs/generator-tradeoff.png (or --results and
--figure); entries merge, generators and judges are kept under --work and reused.
"""

import argparse
import shutil
import sys
import tempfile
import time
from itertools import product
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from bench_generator import COLOUR_TIE, METHODS, prepare_data
from common import load_results, machine, trained_on

from cfgen.counterfactuals import evaluate_counterfactuals
from cfgen.counterfactuals.generation import generate_counterfactuals
from cfgen.data.counterfactuals import made_from
from cfgen.data.table import read_imagefolder
from cfgen.generator.training import train_generator
from cfgen.io import write_json
from cfgen.judges import DEFAULT_JUDGE_STEPS, JUDGES_VERSION

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "generator-tradeoff.json"
FIGURE = ROOT / "docs" / "generator-tradeoff.png"
DEFAULT_TIE = ":".join(COLOUR_TIE)
# Training options on top of the quick preset; "quick" is the preset itself. Until 2026-11-30 its
# learning rate was 1e-3 (lr-1e-3), and the figures in docs/generator.md measured before then used it.
RECIPES: dict[str, dict[str, Any]] = {
    "quick": {},
    "low-noise-x3": {"timestep_bias_multiplier": 3.0, "timestep_bias_portion": 0.6, "learning_rate": 1e-3},
    "lr-1e-3": {"learning_rate": 1e-3},
    "lr-1e-3-no-ema": {"learning_rate": 1e-3, "ema_decay": 0.0},
    "lr-2e-3": {"learning_rate": 2e-3},
    "lr-2e-3-no-ema": {"learning_rate": 2e-3, "ema_decay": 0.0},
    "lr-3e-3-cosine": {"learning_rate": 3e-3, "lr_schedule": "cosine"},
    "lr-5e-3": {"learning_rate": 5e-3},
    "lr-5e-3-cosine": {"learning_rate": 5e-3, "lr_schedule": "cosine"},
    "batch-32": {"batch_size": 32},
}


def numbers(text: str, kind: type = float) -> list:
    return [kind(part) for part in text.split(",") if part.strip()]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strength", type=float, default=0.99)
    parser.add_argument("--tie", default=DEFAULT_TIE, help="the confounding, PARENT:CHILD[=STRENGTH]")
    parser.add_argument("--attributes", default="fg_color", help="edited attributes: fg_color, bg_color, thickness")
    parser.add_argument("--methods", default="reweight", help=f"comma-separated: {', '.join(METHODS)}")
    parser.add_argument("--localize", default="no", help="comma-separated masks: no, edit, others")
    parser.add_argument("--inversions", default="ddim", help="ddim, ddpm or ddim,ddpm (edit-friendly)")
    parser.add_argument("--recipes", default="quick", help=f"training recipes: {', '.join(RECIPES)}")
    parser.add_argument("--train-steps", default="400,1000", help="training lengths (quick preset otherwise)")
    parser.add_argument("--depths", default="0.4,0.6,0.8", help="inversion depths")
    parser.add_argument("--guidance", default="1.5,2,3,5", help="guidance weights on fg_color")
    parser.add_argument("--guidance-starts", default="0", help="fractions of the decoding steps made unguided")
    parser.add_argument("--negatives", default="dropped", help="what guidance pushes away from: dropped, source")
    parser.add_argument("--ddim-steps", type=int, default=20)
    parser.add_argument("--train-size", type=int, default=6000)
    parser.add_argument("--test-size", type=int, default=200)
    parser.add_argument("--judge-steps", type=int, default=DEFAULT_JUDGE_STEPS)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "cfgen-bench-generator"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"default: {RESULTS.relative_to(ROOT)}")
    parser.add_argument("--figure", type=Path, default=FIGURE, help=f"default: {FIGURE.relative_to(ROOT)}")
    parser.add_argument("--plot-only", action="store_true", help="draw the figure from the results file")
    args = parser.parse_args()
    args.methods = [m for m in args.methods.split(",") if m]
    args.recipes = [r for r in args.recipes.split(",") if r]
    args.inversions = [i for i in args.inversions.split(",") if i]
    args.attributes = [a for a in args.attributes.split(",") if a]
    args.localize = [choice for choice in args.localize.split(",") if choice]
    args.negatives = [negative for negative in args.negatives.split(",") if negative]
    tie, _, strength = args.tie.partition("=")
    parent, _, child = tie.partition(":")
    if not (parent and child):
        parser.error(f"--tie is PARENT:CHILD[=STRENGTH], such as digit:thickness=0.99, not {args.tie!r}")
    args.tie, args.strength = (parent, child), float(strength or args.strength)
    args.train_steps, args.depths, args.guidance, args.guidance_starts = (
        numbers(args.train_steps, int), numbers(args.depths), numbers(args.guidance), numbers(args.guidance_starts)
    )  # fmt: skip
    return args


def trained(work: Path, data: Path, method: str, steps: int, recipe: str) -> tuple[Path, float | None]:
    """A generator of ``recipe`` and ``steps`` steps, reused when --work holds one trained on ``data``."""
    out = work / f"gen-{recipe}-{data.name}-{method}-{steps}"
    if trained_on(out, data, "quick", steps=steps, **RECIPES[recipe]):
        timing = out / "bench_train_seconds.txt"
        return out, float(timing.read_text()) if timing.is_file() else None
    started = time.perf_counter()
    train_generator(
        data, out, preset="quick", steps=steps, deconfound=METHODS[method], seed=0, overwrite=True, **RECIPES[recipe]
    )
    seconds = time.perf_counter() - started
    (out / "bench_train_seconds.txt").write_text(f"{seconds:.1f}\n")
    return out, seconds


def exact_edits(work: Path, data: Path, attribute: str) -> Path:
    """The exact counterfactuals of ``attribute=random`` over the test split, made once per dataset."""
    out = work / f"exact-{data.name}-{attribute}"
    card = read_imagefolder(out).card if out.exists() else {}
    if not made_from(card, read_imagefolder(data)):
        generate_counterfactuals(data, f"{attribute}=random", out, split="test", overwrite=True, progress=False)
    return out


def scores(metrics: dict[str, Any], attribute: str, group: str = "rare") -> dict[str, Any]:
    part = metrics[group]
    return {
        "rows": part["rows"],
        "effectiveness": part["effectiveness"].get(attribute),
        "digit_kept": part["preservation"].get("digit"),
        "digit_agrees": part["agreement_with_source"].get("digit"),
        **{f"{name}_kept": value for name, value in part["preservation"].items() if name not in ("all", "digit")},
        "all_kept": part["preservation"]["all"],
        "success": part["success"],
        "stroke_iou": part.get("stroke_iou"),
        "stroke_width_error": part.get("stroke_width_error"),
        "stroke_width_change": part.get("stroke_width_change"),
        "stroke_strength": part.get("stroke_strength"),
        "mse_to_exact": part.get("mse_to_exact"),
        **{
            name: part.get(name)
            for name in ("realism_frechet", "composition_l1_1", "composition_l1_10", "reversibility_l1")
        },
    }


def tie_of(entry: dict[str, Any]) -> str:
    """The entry's confounding; entries written before --tie existed all used the colour tie."""
    return entry.get("tie", DEFAULT_TIE)


def plot(results: dict[str, Any], path: Path) -> None:
    entries = list(results["entries"].values())
    panels = sorted({(tie_of(e), e["attribute"], e["method"]) for e in entries})
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5), squeeze=False)
    for axis, (tie, attribute, method) in zip(axes[0], panels, strict=True):
        curves: dict[tuple[int, str, float, str, str, float, str], list[dict]] = {}
        for e in entries:
            if (tie_of(e), e["attribute"], e["method"]) == (tie, attribute, method):
                procedure = (
                    e["localize"], e["depth"], e.get("recipe", "quick"), e.get("inversion", "ddim"),
                    e.get("guidance_start", 0.0), e.get("negative", "dropped"),
                )  # fmt: skip
                key = (e["train_steps"], *procedure)
                curves.setdefault(key, []).append(e)
        lengths = sorted({steps for steps, *_ in curves})
        colours = plt.cm.viridis([i / max(len(lengths) - 1, 1) for i in range(len(lengths))])
        depths = sorted({depth for _, _, depth, *_ in curves})
        markers = dict(zip(depths, "osD^v", strict=False))
        for (steps, local, depth, recipe, inversion, start, negative), points in sorted(curves.items()):
            points.sort(key=lambda e: e["guidance"])
            x = [p[p.get("headline", "rare")]["digit_agrees"] for p in points]
            y = [p[p.get("headline", "rare")]["effectiveness"] for p in points]
            label = f"{steps} steps{'' if recipe == 'quick' else ' ' + recipe}, depth {depth}"
            label += "" if local == "no" else f", localized ({local} mask)"
            label += ", DDPM inversion" if inversion == "ddpm" else ""
            label += f", guided from {start:.0%} of the steps" if start else ""
            label += ", away from the source value" if negative == "source" else ""
            colour = colours[lengths.index(steps)]
            style = "-." if inversion == "ddpm" else ":" if recipe != "quick" else "-" if local == "no" else "--"
            style = (0, (1, 1)) if start else style  # densely dotted: guided from a later step
            style = (0, (5, 1, 1, 1)) if negative == "source" else style  # dash-dot-dotted: away from the source
            axis.plot(x, y, label=label, marker=markers[depth], color=colour, linestyle=style)
            for p, xi, yi in zip(points, x, y, strict=True):
                axis.annotate(f"{p['guidance']:g}", (xi, yi), textcoords="offset points", xytext=(4, 3), fontsize=7)
        group = points[0].get("headline", "rare")
        axis.set(xlabel=f"digit agrees with the source ({group} edits)", ylabel=f"effectiveness: {attribute} reached",
                 title=f"{attribute} edits, {method}, {tie} at {entries[0]['strength']}; labels: guidance",
                 xlim=(0.3, 1.0), ylim=(0.0, 1.0))  # fmt: skip
        axis.plot([0.95], [0.95], "r*", markersize=12, label="target (standard)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    settings = {
        "strength": args.strength, "train_size": args.train_size, "test_size": args.test_size,
        "ddim_steps": args.ddim_steps, "judge_steps": args.judge_steps, "judges_version": JUDGES_VERSION,
    }  # fmt: skip
    results = load_results(args.results, settings, "generator: effectiveness vs preservation over inference settings")
    if args.plot_only:
        plot(results, args.figure)
        return
    results["machine"] = machine()
    results["commands"] = [*results.get("commands", []), " ".join(["python", *sys.argv])]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data, _ = prepare_data(work, args.strength, argparse.Namespace(**vars(args)), args.tie)
    tie = ":".join(args.tie)
    for method, steps, recipe in product(args.methods, args.train_steps, args.recipes):
        generator, train_seconds = trained(work, data, method, steps, recipe)
        for attribute in args.attributes:
            exact = exact_edits(work, data, attribute)
            for inversion, local, depth, guidance, start, negative in product(
                args.inversions, args.localize, args.depths, args.guidance, args.guidance_starts, args.negatives
            ):
                point = f"{inversion}-l{local}-d{depth}-g{guidance}-s{start}-{negative}"
                out = work / f"cf-{generator.name}-{attribute}-{point}"
                shutil.rmtree(out, ignore_errors=True)
                started = time.perf_counter()
                generate_counterfactuals(
                    data, f"{attribute}=random", out, generator=generator, split="test", steps=args.ddim_steps,
                    inversion_depth=depth, guidance=str(guidance), localize=local, inversion=inversion,
                    guidance_start=start, negative=negative, progress=False,
                )  # fmt: skip
                seconds = time.perf_counter() - started
                metrics = evaluate_counterfactuals(
                    out, data, exact=exact, judge_cache=work / "judges", judge_steps=args.judge_steps
                )
                # the rare targets where the edited attribute is tied to the digit, else every edit
                headline = "rare" if metrics["rare"]["rows"] >= metrics["all"]["rows"] / 2 else "all"
                item = {
                    "headline": headline, "tie": tie, "strength": args.strength, "attribute": attribute,
                    "method": method,
                    "train_steps": steps, "recipe": recipe,
                    "train_seconds": train_seconds, "inversion": inversion, "localize": local, "depth": depth,
                    "guidance": guidance, "guidance_start": start, "negative": negative,
                    "generation_seconds": round(seconds, 1), "rare": scores(metrics, attribute),
                    "all": scores(metrics, attribute, "all"),
                    "judge_accuracy_on_sources": metrics["judge_accuracy_on_sources"],
                }  # fmt: skip
                recipe_key = "" if recipe == "quick" else f"|{recipe}"
                inversion_key = "" if inversion == "ddim" else f"|{inversion}"
                tie_key = "" if tie == DEFAULT_TIE else f"{tie}|"
                start_key = f"|from{start}" if start else ""
                negative_key = "" if negative == "dropped" else f"|{negative}"  # entries before the choice: dropped
                key = (
                    f"{tie_key}{attribute}|{method}|{steps}|{local}|{depth}|{guidance}{recipe_key}{inversion_key}"
                    f"{start_key}{negative_key}"
                )
                results["entries"][key] = item
                write_json(args.results, results)
                rare = item[headline]
                print(
                    f"{tie} tied, {attribute}, {method} {recipe} {steps} steps, {inversion}, localize {local}, "
                    f"depth {depth}, "
                    f"guidance {guidance} from {start} away from {negative} "
                    f"({headline} edits): "
                    f"effectiveness {rare['effectiveness']:.3f}, digit agrees {rare['digit_agrees']:.3f}, "
                    f"all kept {rare['all_kept']:.3f}, success {rare['success']:.3f}, "
                    f"stroke IoU {rare['stroke_iou']:.3f}, MSE {rare['mse_to_exact']:.4f} ({seconds:.0f} s)",
                    flush=True,
                )
                shutil.rmtree(out)
            plot(results, args.figure)
    print(f"wrote {args.results} and {args.figure}")


if __name__ == "__main__":
    main()
