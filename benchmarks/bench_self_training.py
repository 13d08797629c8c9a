"""Self-training against as many more steps on the data alone, every attribute scored on test.

Takes a finished ``cfgen pipeline`` run on built-in data (its data/, generator/ and counterfactuals/:
the generator's edits of training images at the settings it chose). Two generators start from the
run's (``--init-from``) and train --steps more: the self-trained one on the training rows and the
edits its judges accept (``--counterfactuals``), the control on the training rows alone, so that any
difference is the edits', not the steps'. Each of the three then has each attribute's setting chosen
on the run's validation split over a small grid, and its edits of the first --test-images
unconfounded test digits are scored against the exact counterfactuals (``bench_attributes.py``, whose
entries this collects).

    python benchmarks/bench_self_training.py --run RUN [--steps 1000] [--test-images 500]
        [--judge-cache DIR] [--results benchmarks/results/self-training.json]
"""

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import bench_attributes
import torch
from common import load_results, machine

from cfgen.generator.model import Generator
from cfgen.generator.training import train_generator
from cfgen.io import write_json
from cfgen.judges import default_judge_cache

RESULTS = Path(__file__).resolve().parent / "results" / "self-training.json"
# Per attribute, the bench_attributes grid the tuner chooses from: the standard preset's choices for each
# attribute and their neighbours (docs/generator.md, "Every attribute at the setting chosen on validation").
GRIDS = {
    "fg_color": ["--localize", "edit", "--depths", "0.6", "--guidance", "3,5", "--guidance-starts", "0,0.6"],
    "thickness": ["--localize", "edit", "--depths", "0.6,0.8", "--guidance", "3,5", "--guidance-starts", "0"],
    "bg_color": ["--localize", "others", "--depths", "1.0", "--guidance", "2,3,4", "--guidance-starts", "0"],
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a finished cfgen pipeline run on built-in data")
    parser.add_argument("--steps", type=int, default=1000, help="training steps from the run's generator")
    parser.add_argument("--attributes", default=",".join(GRIDS), help="comma-separated edited attributes")
    parser.add_argument("--test-images", type=int, default=500)
    parser.add_argument("--judge-cache", default=str(default_judge_cache()))
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "cfgen-bench-self-training"))
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    run, work = Path(args.run).resolve(), Path(args.work)
    generator = Generator.load(run / "generator")
    training = generator.training
    shutil.rmtree(work, ignore_errors=True)
    recipe = {
        "preset": training["preset"], "deconfound": ",".join(training["deconfound"]), "steps": args.steps,
        "init_from": run / "generator", "seed": training["seed"], "architecture": training["architecture"],
        "prediction_type": generator.scheduler.config.prediction_type,
    }  # fmt: skip
    seconds = {}
    for name, edits in (("control", None), ("self-trained", run / "counterfactuals")):
        started = time.perf_counter()
        train_generator(run / "data", work / name, counterfactuals=edits, **recipe)
        seconds[name] = round(time.perf_counter() - started, 1)

    settings = {"run": str(run), "test_images": args.test_images, "steps": args.steps}
    results_file = Path(args.results)
    results = load_results(results_file, settings, "self-training against as many steps on the data alone")
    results["machine"] = machine()
    results["commands"] = [*results.get("commands", []), " ".join(["python", *sys.argv])]
    results["self_training"] = Generator.load(work / "self-trained").training["self_training"]
    results["training_seconds"] = seconds
    generators = {
        "the run's generator": run / "generator",
        "more steps on the data alone": work / "control",
        "self-trained": work / "self-trained",
    }
    for index, (name, folder) in enumerate(generators.items()):
        as_run = work / "runs" / str(index)  # bench_attributes reads RUN/data and RUN/generator
        as_run.mkdir(parents=True)
        (as_run / "data").symlink_to(run / "data")
        (as_run / "generator").symlink_to(folder)
        scored = work / f"{as_run.name}.json"
        for attribute in args.attributes.split(","):
            bench_attributes.main([
                "--run", str(as_run), "--attributes", attribute, *GRIDS[attribute], "--inversions", "ddpm",
                "--test-images", str(args.test_images), "--judge-cache", args.judge_cache,
                "--work", str(work / "attributes"), "--results", str(scored), "--threads", str(args.threads),
            ])  # fmt: skip
        results["entries"][name] = json.loads(scored.read_text())["entries"]
        write_json(results_file, results)
    print(f"wrote {results_file}")


if __name__ == "__main__":
    main()
