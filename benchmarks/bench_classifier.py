"""Debiasing benchmark: every classifier method on colored digits whose colour follows the digit.

Built-in colored digits at digit-colour association 0.99; the test split draws every factor
independently (the unconfounded test), test_anti never shows a digit in its training colour.
Counterfactuals come from the exact renderer (``fg_color=*`` on the train split: the bound of a
perfect generator) and, with ``--train-generator PRESET`` (a generator trained here on the
benchmark's own confounded train split), ``--generator GEN`` or an already generated folder
(``--generated DIR``), from a trained generator. Methods that use no counterfactuals run once; the
oracle is ERM on the same digits re-rendered without the tie.

Targets: cf-reg with generated counterfactuals reaches >= 0.95x the oracle's unconfounded-test
accuracy and beats group-dro.

    python benchmarks/bench_classifier.py [--methods erm,cf-reg,...] [--seeds 0,1,2] [--epochs 6] [--cf-weight W]
        [--train-generator quick | --generator GEN | --generated DIR] [--skip-exact] [--threads 1]

Runnable in parts: results merge into benchmarks/results/classifier.json (entries of the same
method and counterfactual source are replaced; a change of settings starts the file afresh).
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import load_results, machine, trained_on

from cfgen.classifier.config import METHOD_NAMES, ClassifierConfig, parse_seeds
from cfgen.classifier.evaluation import format_statistic
from cfgen.classifier.methods import build_objective
from cfgen.classifier.training import load_data, train_classifiers
from cfgen.counterfactuals.generation import generate_counterfactuals
from cfgen.data.counterfactuals import dataset_digest, made_from
from cfgen.data.table import read_imagefolder
from cfgen.datasets.colored_mnist.rendering import ColoredMNISTConfig, make_colored_mnist
from cfgen.generator.config import PRESETS as GENERATOR_PRESETS
from cfgen.generator.inference import DEFAULT_STEPS
from cfgen.generator.model import CONFIG_FILE
from cfgen.generator.training import train_generator
from cfgen.io import write_json

RESULTS = Path(__file__).resolve().parent / "results" / "classifier.json"
STRENGTH = 0.99
SPURIOUS = "fg_color"
TARGET_RATIO = 0.95


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="all", help=f"comma-separated, or all: {', '.join(METHOD_NAMES)}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train-size", type=int, default=3000, help="training images (default 3000)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--cf-weight", type=float, default=ClassifierConfig.cf_weight, help="cf-reg's penalty weight")
    parser.add_argument(
        "--train-generator", choices=list(GENERATOR_PRESETS), help="train a generator (reweight) on the train split"
    )
    parser.add_argument("--generator", help="trained generator folder: generate counterfactuals with it")
    parser.add_argument("--generated", help="a counterfactual folder already generated over the benchmark data")
    parser.add_argument(
        "--generated-intervention", default="fg_color=random", help="what --generator edits (default fg_color=random)"
    )
    parser.add_argument("--generation-steps", type=int, help="DDIM steps each way (default: cfgen generate's)")
    parser.add_argument("--skip-exact", action="store_true", help="run only the generated counterfactuals")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "cfgen-bench-classifier"))
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--threads", type=int, help="torch threads (1 is faster on a busy 2-core machine)")
    args = parser.parse_args(argv)
    args.methods = list(METHOD_NAMES) if args.methods == "all" else [m.strip() for m in args.methods.split(",")]
    unknown = [m for m in args.methods if m not in METHOD_NAMES]
    if unknown:
        parser.error(f"unknown method {unknown[0]!r}; valid: {', '.join(METHOD_NAMES)}")
    if sum(map(bool, (args.train_generator, args.generator, args.generated))) > 1:
        parser.error("give one of --train-generator, --generator and --generated")
    return args


def dataset_config(train_size: int) -> ColoredMNISTConfig:
    sizes = {"train": train_size, "validation": 1000, "test": 2000, "test_anti": 1000}
    return ColoredMNISTConfig(strength=STRENGTH, sizes=sizes, seed=0)


def prepare_data(work: Path, config: ColoredMNISTConfig) -> tuple[Path, Path]:
    """The benchmark dataset and its exact counterfactuals, rebuilt only when the settings changed."""
    data, exact = work / "data", work / "cf-exact"
    if not data.exists() or read_imagefolder(data).card.get("builtin", {}).get("config") != config.to_dict():
        make_colored_mnist(config, data, overwrite=True)
    card = read_imagefolder(exact).card if exact.exists() else {}
    if not made_from(card, read_imagefolder(data)):
        generate_counterfactuals(data, f"{SPURIOUS}=*", exact, generator="exact", split="train", overwrite=True)
    return data, exact


def trained_generator(data: Path, preset: str, out: Path) -> Path:
    """A generator trained (``reweight``) on the benchmark's train split, reused when ``out`` holds one for it."""
    if trained_on(out, data, preset):
        return out
    started = time.perf_counter()
    train_generator(data, out, preset=preset, deconfound="reweight", split="train", seed=0, overwrite=True)
    print(f"trained the {preset} generator in {time.perf_counter() - started:.0f} s", flush=True)
    return out


def generate(data: Path, generator: Path, intervention: str, steps: int | None, out: Path) -> Path:
    """Counterfactuals of the train split from a trained generator (what ``cfgen generate`` does),
    reused when ``out`` already holds them for this dataset, generator, intervention and steps, and
    was written after the generator (a generator retrained in the same folder makes them stale)."""
    card = read_imagefolder(out).card.get("counterfactuals", {}) if out.exists() else {}
    wanted = {
        "source_sha256": dataset_digest(read_imagefolder(data)),
        "generator": str(generator.resolve()),
        "intervention": intervention,
    }
    run = out / "run.json"
    record = json.loads(run.read_text())["config"] if run.is_file() else {}
    fresh = run.is_file() and run.stat().st_mtime >= (generator / CONFIG_FILE).stat().st_mtime
    if fresh and record.get("steps") == (steps or DEFAULT_STEPS) and {key: card.get(key) for key in wanted} == wanted:
        return out
    generate_counterfactuals(data, intervention, out, generator=generator, split="train", steps=steps, overwrite=True)
    return out


def entry(metrics: dict[str, Any], source: str, seconds: float) -> dict[str, Any]:
    splits = metrics["splits"]
    return {
        "method": metrics["method"],
        "counterfactuals": source,
        "seeds": metrics["seeds"],
        "test_accuracy": splits["test"]["accuracy"],
        "test_worst_group_accuracy": splits["test"]["worst_group_accuracy"],
        "test_anti_accuracy": splits["test_anti"]["accuracy"],
        "validation_accuracy": splits["validation"]["accuracy"],
        "selected_epochs": [run["selected_epoch"] for run in metrics["per_seed"]],
        "seconds": round(seconds, 1),
    }


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    config = dataset_config(args.train_size)
    data, exact = prepare_data(work, config)
    sources = {} if args.skip_exact else {"exact": exact}
    generator = Path(args.generator) if args.generator else None
    if args.train_generator:
        generator = trained_generator(data, args.train_generator, work / f"generator-{args.train_generator}")
    if generator is not None:
        intervention, steps = args.generated_intervention, args.generation_steps
        sources["generated"] = generate(data, generator, intervention, steps, work / "cf-generated")
    elif args.generated:
        sources["generated"] = Path(args.generated)
    settings = {
        "dataset": config.to_dict(),
        "spurious": SPURIOUS,
        "epochs": args.epochs,
        "lr": args.lr,
        "cf_weight": args.cf_weight,
        "exact_intervention": f"{SPURIOUS}=*",
    }
    results = load_results(Path(args.results), settings, "classifier debiasing on colored digits")
    results["machine"] = machine()
    invocation = {"command": " ".join(["python", *sys.argv]), "methods": args.methods, "seeds": args.seeds}
    results["invocations"] = [*results.get("invocations", []), invocation]
    wall, cpu = time.perf_counter(), time.process_time()
    seeds = parse_seeds(args.seeds)
    if not sources:
        raise SystemExit("--skip-exact needs --generator or --generated")
    plain_done: set[str] = set()  # methods without counterfactuals run once, whatever the sources
    for source, folder in sources.items():
        loaded = None
        for method in args.methods:
            config = ClassifierConfig(
                data=str(data),
                method=method,
                out=str(work / "runs" / method),
                spurious=(SPURIOUS,),
                counterfactuals=(str(folder),),
                epochs=args.epochs,
                lr=args.lr,
                cf_weight=args.cf_weight,
                seeds=seeds,
                overwrite=True,
                progress=False,
            )
            uses = build_objective(config).uses_counterfactuals
            if not uses and method in plain_done:
                continue
            plain_done.add(method)
            label = source if uses else "none"
            config.out = f"{config.out}-{label}"
            if method != "oracle" and loaded is None:
                loaded = load_data(ClassifierConfig(**{**config.to_dict(), "method": "cf-augment"}))
            started = time.perf_counter()
            metrics = train_classifiers(config, loaded if method != "oracle" else None)
            key = f"{method}|{label}"
            results["entries"][key] = entry(metrics, label, time.perf_counter() - started)
            if uses:
                results["entries"][key]["intervention"] = _intervention(folder)
            print(_row(results["entries"][key], _oracle(results)), flush=True)
            write_json(Path(args.results), results)
    invocation["wall_seconds"] = round(time.perf_counter() - wall, 1)
    invocation["cpu_seconds"] = round(time.process_time() - cpu, 1)
    invocation["load_average_at_end"] = list(os.getloadavg())
    results["targets"] = targets(results)
    write_json(Path(args.results), results)
    return results


def _intervention(folder: Path) -> str:
    return read_imagefolder(folder).card["counterfactuals"].get("intervention", "?")


def _oracle(results: dict[str, Any]) -> float | None:
    oracle = results["entries"].get("oracle|none")
    return oracle["test_accuracy"]["mean"] if oracle else None


def targets(results: dict[str, Any]) -> dict[str, Any]:
    """cf-reg (per counterfactual source) against TARGET_RATIO x oracle and against group-dro."""
    oracle, entries = _oracle(results), results["entries"]
    dro = entries.get("group-dro|none")
    found = {}
    for source in ("generated", "exact"):
        reg = entries.get(f"cf-reg|{source}")
        if reg is None:
            continue
        accuracy = reg["test_accuracy"]["mean"]
        found[source] = {
            "cf_reg_test_accuracy": accuracy,
            "ratio_to_oracle": accuracy / oracle if oracle else None,
            "reaches_ratio": accuracy >= TARGET_RATIO * oracle if oracle else None,
            "beats_group_dro": accuracy > dro["test_accuracy"]["mean"] if dro else None,
        }
    return found


def _row(item: dict[str, Any], oracle: float | None) -> str:
    ratio = f"{item['test_accuracy']['mean'] / oracle:.2f}" if oracle else "-"
    return (
        f"| {item['method']} | {item['counterfactuals']} | {format_statistic(item['test_accuracy'])} | "
        f"{format_statistic(item['test_worst_group_accuracy'])} | {format_statistic(item['test_anti_accuracy'])} | "
        f"{ratio} | {item['seconds']:.0f} |"
    )


def table(results: dict[str, Any]) -> str:
    """The markdown table of every entry, in method order."""
    header = [
        "| method | counterfactuals | test accuracy (unconfounded) | test worst-group | test_anti accuracy | "
        "/ oracle | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    order = {name: i for i, name in enumerate(METHOD_NAMES)}
    items = sorted(results["entries"].values(), key=lambda e: (order[e["method"]], e["counterfactuals"]))
    return "\n".join([*header, *(_row(item, _oracle(results)) for item in items)])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    results = run_benchmark(args)
    print()
    print(table(results))
    verdict = {True: "met", False: "not met", None: "not measured"}
    for source, target in results["targets"].items():
        ratio = "-" if target["ratio_to_oracle"] is None else f"{target['ratio_to_oracle']:.3f}"
        print(
            f"cf-reg ({source} counterfactuals): {ratio} of the oracle's accuracy "
            f"(>= {TARGET_RATIO}: {verdict[target['reaches_ratio']]}); "
            f"beats group-dro: {verdict[target['beats_group_dro']]}"
        )
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
