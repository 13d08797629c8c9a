"""Every attribute's edits at the one setting the tuner chose for it on validation, scored on test.

Takes a finished ``cfgen pipeline`` run on built-in data (its data/ and generator/ folders) and
works on a copy of its generator under --work. For each attribute, ``tune_inference`` chooses its
settings on the run's validation split over the grid given here, as the pipeline does over its
preset's grid; the generator then edits the first --test-images of the unconfounded test split
``ATTRIBUTE=random`` with the settings it saved (as ``cfgen generate`` would), and
``evaluate_counterfactuals`` scores them against the exact counterfactuals of the same plan. Figures
are for every edit, beside those of the rare targets (pairs at most a fifth as frequent in training
as independence would make them: for the colour the digit is tied to, nearly all).

``--rim-noise F`` decodes with another noise level (a share of the schedule's timesteps) below which a
background-style edit (the ``others`` mask) reaches into the rim round what it keeps
(``cfgen.generator.pipeline.RIM_NOISE``; 0: never, as before it existed), to measure what the rim
steps buy at equal settings.

``--directions joint,untied`` lets the tuner choose what guidance directions are conditioned on
(``InferenceSettings.direction``); a generator saved before generators held their ties (the variables
tied in their training rows) is given those of the run's training split first.

``--before-guidance target,dropped`` lets the tuner choose what the steps before a late guidance start are
conditioned on (``InferenceSettings.before_guidance``).

``--holds W`` lets the tuner try, at the best point of the grid, holding every variable the edit
keeps (guidance of weight W toward its source value), as the standard preset's grid does.

Targets on the standard preset's generator: background edits effectiveness >= 0.95 with the digit
and the stroke colour kept on >= 0.95; thickness edits effectiveness >= 0.90 with digit agreement
>= 0.90.

    python benchmarks/bench_attributes.py --run RUN --attributes bg_color --localize others --depths 1.0
        [--guidance 2,3] [--guidance-starts 0] [--sources 100] [--test-images 500] [--judge-cache DIR]
        [--holds W] [--negatives dropped,source] [--directions joint,untied] [--before-guidance target,dropped]
        [--rim-noise F] [--results R.json]

Writes benchmarks/results/attributes.json (or --results); one entry per attribute (and rim noise level
other than the default), replaced when measured again.
"""

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_tradeoff import numbers, scores
from common import load_results, machine

import cfgen.generator.pipeline
from cfgen.counterfactuals import evaluate_counterfactuals
from cfgen.counterfactuals.generation import EXACT, generate_counterfactuals
from cfgen.counterfactuals.tuning import (
    GUIDANCE_BEFORE,
    GUIDANCE_DIRECTIONS,
    GUIDANCE_NEGATIVES,
    SETTING_KEYS,
    tune_inference,
)
from cfgen.data.adapters import open_dataset
from cfgen.generator.model import Generator, variable_ties
from cfgen.generator.pipeline import save_generator
from cfgen.io import write_json
from cfgen.judges import DEFAULT_JUDGE_STEPS, default_judge_cache

RESULTS = Path(__file__).resolve().parent / "results" / "attributes.json"
SCORED = ("effectiveness", "kept", "success", "reach", "graded_success", "change")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a finished cfgen pipeline run on built-in data")
    parser.add_argument("--attributes", default="bg_color", help="comma-separated edited attributes")
    parser.add_argument("--localize", default="others", help="masks to choose from: no, edit, others")
    parser.add_argument("--inversions", default="ddpm", help="ddim, ddpm or both")
    parser.add_argument("--depths", default="1.0")
    parser.add_argument("--guidance", default="2,3")
    parser.add_argument("--guidance-starts", default="0")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps each way")
    parser.add_argument("--sources", type=int, default=100, help="validation images the tuner edits per setting")
    parser.add_argument("--test-images", type=int, default=500)
    parser.add_argument("--judge-steps", type=int, default=DEFAULT_JUDGE_STEPS, help="the run's judges")
    parser.add_argument("--judge-cache", default=str(default_judge_cache()))
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "cfgen-bench-attributes"))
    parser.add_argument(
        "--rim-noise", type=float, default=cfgen.generator.pipeline.RIM_NOISE, help="an ablation: 0 for none"
    )
    parser.add_argument("--holds", default="", help="hold weights tried at the grid's best point (default: none)")
    parser.add_argument("--negatives", default=",".join(GUIDANCE_NEGATIVES), help="what guidance pushes away from")
    parser.add_argument("--directions", default=",".join(GUIDANCE_DIRECTIONS), help="joint, untied or both")
    parser.add_argument("--before-guidance", default=",".join(GUIDANCE_BEFORE), help="target, dropped or both")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    default_rim = cfgen.generator.pipeline.RIM_NOISE
    cfgen.generator.pipeline.RIM_NOISE = args.rim_noise
    run, work = Path(args.run).resolve(), Path(args.work)
    data = run / "data"
    generator = work / "generator"  # the tuner saves its choice into the generator: never the run's own
    shutil.rmtree(generator, ignore_errors=True)
    shutil.copytree(run / "generator", generator)
    record_ties(generator, data)
    grid = {
        "localize": tuple(args.localize.split(",")),
        "inversions": tuple(args.inversions.split(",")),
        "depths": tuple(numbers(args.depths)),
        "guidance": tuple(numbers(args.guidance)),
        "guidance_starts": tuple(numbers(args.guidance_starts)),
        "holds": tuple(numbers(args.holds)),
        "negatives": tuple(args.negatives.split(",")),
        "directions": tuple(args.directions.split(",")),
        "before_guidance": tuple(args.before_guidance.split(",")),
    }
    settings = {"run": str(run), "steps": args.steps, "sources": args.sources, "test_images": args.test_images}
    results_file = Path(args.results)
    results = load_results(results_file, settings, "every attribute's edits at the setting chosen on validation")
    results["machine"] = machine()
    results["commands"] = [*results.get("commands", []), " ".join(["python", *sys.argv])]
    judging = {"judge_cache": args.judge_cache, "judge_steps": args.judge_steps}
    for attribute in args.attributes.split(","):
        started = time.perf_counter()
        inference = tune_inference(
            generator, data, attributes=[attribute], steps=args.steps, sources=args.sources, **grid, **judging
        )
        tune_seconds = time.perf_counter() - started
        chosen = inference["attributes"][attribute]
        plan = {"split": "test", "limit": args.test_images, "progress": False}
        edits, exact = work / f"cf-{attribute}", work / f"exact-{attribute}"
        started = time.perf_counter()
        generate_counterfactuals(data, f"{attribute}=random", edits, generator=generator, overwrite=True, **plan)
        edit_seconds = time.perf_counter() - started
        generate_counterfactuals(data, f"{attribute}=random", exact, generator=EXACT, overwrite=True, **plan)
        metrics = evaluate_counterfactuals(edits, data, exact=exact, soundness_images=0, **judging)
        entry = attribute if args.rim_noise == default_rim else f"{attribute}|rim-noise{args.rim_noise}"
        results["entries"][entry] = {
            "rim_noise": args.rim_noise,
            "grid": grid,
            "chosen": chosen,
            "validation": [
                {**{key: point[key] for key in SETTING_KEYS}, **{key: round(point[key], 4) for key in SCORED}}
                for point in inference["selection"]["grid"][attribute]
            ],
            "test": scores(metrics, attribute, "all"),
            "test_rare": scores(metrics, attribute, "rare"),
            "test_by_source": metrics["all"]["by_source"],
            "judge_accuracy_on_sources": metrics["judge_accuracy_on_sources"],
            "tune_seconds": round(tune_seconds, 1),
            "edit_seconds": round(edit_seconds, 1),
        }
        write_json(results_file, results)
        test = results["entries"][entry]["test"]
        print(
            f"{attribute}: chose {json.dumps(chosen)} on validation ({tune_seconds:.0f} s); on {test['rows']} test "
            f"edits: effectiveness {test['effectiveness']:.3f}, digit agrees {test['digit_agrees']:.3f}, "
            + ", ".join(f"{key} {value:.3f}" for key, value in test.items() if key.endswith("_kept"))
            + f", success {test['success']:.3f}, MSE {test['mse_to_exact']:.4f} ({edit_seconds:.0f} s to edit)",
            flush=True,
        )
    print(f"wrote {results_file}")


def record_ties(folder: Path, data: Path) -> None:
    """Give a generator saved before generators held their ties those of its training rows."""
    model = Generator.load(folder)
    if model.ties:
        return
    model.ties = variable_ties(model.schema, open_dataset(data).split(model.training["data"]["split"]))
    save_generator(model, folder)
    print(f"recorded the ties of its training rows: {model.ties}", flush=True)


if __name__ == "__main__":
    main()
