"""The main job's time budget: ``cfgen pipeline`` (quick preset) must finish in 10 minutes on a 2-core CPU.

Runs the pipeline on the built-in default data into a fresh folder with an empty judge cache (what a
first run on a fresh machine does), and records the wall time, each stage's seconds, the peak
memory and the run's headline figures.

    python benchmarks/bench_pipeline.py [--preset quick] [--seed 0] [--results R.json] [--keep DIR]

``--keep DIR`` runs in a new folder DIR and keeps it (the run in DIR/run, its judges in
DIR/cache/cfgen/judges, the ``--judge-cache`` of a later benchmark), so that a stage can be rerun on
the same generator and data.
"""

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

from common import machine

from cfgen.generator.model import CONFIG_FILE
from cfgen.io import write_json
from cfgen.pipeline import PRESETS, run_pipeline

RESULTS = Path(__file__).resolve().parent / "results"
BUDGET_SECONDS = 600


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=list(PRESETS), default="quick")
    parser.add_argument("--results", help="default: benchmarks/results/pipeline-PRESET.json")
    parser.add_argument("--keep", help="a new folder to run in and keep (default: a temporary one)")
    parser.add_argument("--seed", type=int, default=0, help="the run's seed: data, generator, classifiers")
    args = parser.parse_args(argv)
    results = Path(args.results or RESULTS / f"pipeline-{args.preset}.json")
    if args.keep and Path(args.keep).exists():
        parser.error(f"--keep {args.keep} exists; give a new folder")
    with nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory() as work:
        os.environ["XDG_CACHE_HOME"] = str(Path(work) / "cache")  # no cached judges, as on a fresh machine
        record = {"benchmark": "cfgen pipeline wall time", "command": " ".join(["python", *sys.argv])}
        record["machine"] = machine()
        started = time.perf_counter()
        run = run_pipeline(Path(work) / "run", preset=args.preset, seed=args.seed)
        seconds = time.perf_counter() - started
        metrics = json.loads((run / "metrics.json").read_text())
        generator = json.loads((run / "generator" / CONFIG_FILE).read_text())["training"]
    record |= {
        "preset": args.preset,
        "seed": args.seed,
        "wall_seconds": round(seconds, 1),
        "budget_seconds": BUDGET_SECONDS,
        "within_budget": seconds <= BUDGET_SECONDS,
        "stage_seconds": metrics["seconds"],
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "confounding": metrics["confounding"],
        "counterfactual_quality": {
            key: metrics["counterfactual_quality"]["all"][key]
            for key in ("effectiveness", "preservation", "success", "mse_to_exact", "stroke_iou")
        }
        if metrics["counterfactual_quality"]
        else None,
        "inference": metrics["inference"],
        "generator_learning_rate": generator["learning_rate"],
        "cf_weight": PRESETS[args.preset]["cf_weight"],
        "mixed_precision": metrics["mixed_precision"],
        "test_accuracy": {m: s["test"]["accuracy"]["mean"] for m, s in metrics["classifiers"].items() if "test" in s},
    }
    write_json(results, record)
    print(json.dumps({k: record[k] for k in ("wall_seconds", "within_budget", "stage_seconds", "peak_rss_mib")}))
    print(f"wrote {results}")


if __name__ == "__main__":
    main()
