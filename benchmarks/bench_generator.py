"""Generator benchmark (issue 3, section 4): colour edits a confounded generator has (almost) never seen.

For each digit-colour association (0.9, 0.95, 0.99) a colored-digits dataset is built; a generator
is trained on its train split with each deconfounding choice (none, reweight, consistency and the
combination reweight+consistency), the same preset and so the same budget each; it then edits the
foreground colour of every image of the unconfounded test split to a random other colour
(``fg_color=random``), and ``cfgen evaluate-counterfactuals`` scores the edits against the exact
counterfactuals of the same plan. The headline is the "rare" subset: targets whose (digit, colour)
pair is at most a fifth as frequent in training as independence would make it, which at these
strengths is every target but the digit's own training colour.

    effectiveness   the edited image has the target colour (read from its pixels)
    digit kept      a digit classifier trained on unconfounded re-rendered digits reads the source digit
    digit agrees    it reads the digit it reads on the source image (its own mistakes do not count)
    all kept        digit, background colour and thickness all read as before
    MSE             pixel error to the exact counterfactual (images in [0, 1])

Targets (``full`` preset, 0.99): effectiveness >= 0.98, digit kept >= 0.95, MSE <= 0.5x that of none.
On a CUDA machine the run also measures training throughput (cfgen's training against a plain
loop of the same UNet and conditioning, bf16), model FLOPs utilisation, and generation throughput.

    python benchmarks/bench_generator.py [--preset quick|full|tiny] [--strengths 0.9,0.95,0.99]
        [--methods none,reweight,consistency,reweight+consistency] [--test-size 300] [--threads 1]
        [--train-seconds S]   (CUDA: a long preset's training cut to about S seconds)

Runnable in parts: entries merge into benchmarks/results/generator-PRESET.json (an entry of the same
strength and method is replaced; a change of settings starts the file afresh). Datasets, trained
generators and judges are kept under --work and reused.
"""

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from common import load_results, machine, preset_recipe, trained_on
from torch.utils.flop_counter import FlopCounterMode

from cfgen.counterfactuals import evaluate_counterfactuals
from cfgen.counterfactuals.generation import generate_counterfactuals, staging_dir
from cfgen.data.counterfactuals import made_from
from cfgen.data.images import ImageFormat
from cfgen.data.table import read_imagefolder
from cfgen.datasets.colored_mnist.rendering import ColoredMNISTConfig, make_colored_mnist
from cfgen.generator.config import PRESETS
from cfgen.generator.inference import DEFAULT_INVERSION_DEPTH, DEFAULT_STEPS
from cfgen.generator.model import Generator
from cfgen.generator.training import train_generator
from cfgen.io import write_json
from cfgen.judges import DEFAULT_JUDGE_STEPS

RESULTS = Path(__file__).resolve().parent / "results"
STRENGTHS = (0.9, 0.95, 0.99)
METHODS = {
    "none": "none",
    "reweight": "reweight",
    "consistency": "consistency",
    "reweight+consistency": "reweight,consistency",
}
INTERVENTION = "fg_color=random"
COLOUR_TIE = ("digit", "fg_color")  # the default data's confounding
TARGETS = {"effectiveness": 0.98, "digit_kept": 0.95, "mse_ratio_to_none": 0.5}
# dense bf16 tensor-core peaks (FLOP/s) for model FLOPs utilisation
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "4090": 165e12}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=list(PRESETS), default="full" if torch.cuda.is_available() else "quick")
    parser.add_argument("--strengths", default=",".join(map(str, STRENGTHS)))
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated: {', '.join(METHODS)}")
    parser.add_argument("--train-size", type=int, default=6000)
    parser.add_argument("--test-size", type=int, default=300, help="unconfounded test images edited (default 300)")
    parser.add_argument("--steps", type=int, help="DDIM steps (default: cfgen generate's)")
    parser.add_argument("--inversion-depth", type=float, help="default: cfgen generate's")
    parser.add_argument("--guidance", help="default: cfgen generate's")
    parser.add_argument("--batch-size", type=int, default=64, help="generation batch size")
    parser.add_argument("--judge-steps", type=int, default=DEFAULT_JUDGE_STEPS, help="training steps of the judges")
    parser.add_argument("--retrain", action="store_true", help="train again even if --work holds the generator")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "cfgen-bench-generator"))
    parser.add_argument("--results", help="default: benchmarks/results/generator-PRESET.json")
    parser.add_argument("--threads", type=int, help="torch threads (1 is faster on a busy 2-core machine)")
    parser.add_argument("--skip-throughput", action="store_true", help="skip the CUDA throughput measurements")
    parser.add_argument(
        "--train-seconds",
        type=float,
        help="CUDA: train each generator for about this long at the throughput measured first (at most the "
        "preset's steps), so that a time-limited GPU lease can hold a run of a long preset",
    )
    args = parser.parse_args(argv)
    args.strengths = [float(s) for s in args.strengths.split(",") if s.strip()]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method {unknown[0]!r}; valid: {', '.join(METHODS)}")
    args.results = Path(args.results or RESULTS / f"generator-{args.preset}.json")
    return args


def prepare_data(
    work: Path, strength: float, args: argparse.Namespace, tie: tuple[str, str] = COLOUR_TIE
) -> tuple[Path, Path]:
    """The dataset of one ``parent -> child`` tie and strength and the exact counterfactuals of the plan,
    rebuilt when settings change."""
    sizes = {"train": args.train_size, "validation": 0, "test": args.test_size, "test_anti": 0}
    config = ColoredMNISTConfig(strength=strength, ties=((*tie, strength),), sizes=sizes, seed=0)
    name = str(strength) if tie == COLOUR_TIE else f"{'-'.join(tie)}-{strength}"
    data, exact = work / f"data-{name}", work / f"exact-{name}"
    if not data.exists() or read_imagefolder(data).card.get("builtin", {}).get("config") != config.to_dict():
        make_colored_mnist(config, data, overwrite=True)
    card = read_imagefolder(exact).card if exact.exists() else {}
    if not made_from(card, read_imagefolder(data)):
        generate_counterfactuals(data, INTERVENTION, exact, split="test", overwrite=True, progress=False)
    return data, exact


def train(work: Path, data: Path, strength: float, method: str, args: argparse.Namespace) -> tuple[Path, float | None]:
    """A trained generator (reused from --work when it was trained the same way) and the seconds it took."""
    out = work / f"gen-{args.preset}-{args.training_steps}-{strength}-{method}"
    timing = out / "bench_train_seconds.txt"
    if not args.retrain and trained_on(out, data, args.preset, steps=args.training_steps):
        return out, float(timing.read_text()) if timing.is_file() else None
    started = time.perf_counter()
    train_generator(
        data, out, preset=args.preset, steps=args.training_steps, deconfound=METHODS[method], seed=0, overwrite=True
    )
    seconds = time.perf_counter() - started
    timing.write_text(f"{seconds:.1f}\n")
    return out, seconds


def evaluate(work: Path, data: Path, exact: Path, generator: Path, args: argparse.Namespace) -> dict[str, Any]:
    out = work / f"cf-{generator.name}"
    shutil.rmtree(staging_dir(out), ignore_errors=True)  # a fresh run, so that the throughput is one
    started = time.perf_counter()
    generate_counterfactuals(
        data, INTERVENTION, out, generator=generator, split="test", batch_size=args.batch_size, steps=args.steps,
        inversion_depth=args.inversion_depth, guidance=args.guidance, overwrite=True,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    metrics = evaluate_counterfactuals(
        out, data, exact=exact, judge_cache=work / "judges", judge_steps=args.judge_steps, progress=True
    )
    settings = json.loads((out / "run.json").read_text())["config"]
    return {"metrics": metrics, "generation_seconds": seconds, "generation_settings": settings}


def entry(
    strength: float, method: str, result: dict[str, Any], training_steps: int, train_seconds: float | None
) -> dict[str, Any]:
    metrics = result["metrics"]

    def scores(group: str) -> dict[str, Any]:
        part = metrics[group]
        return {
            "rows": part["rows"],
            "effectiveness": part["effectiveness"].get("fg_color"),
            "digit_kept": part["preservation"].get("digit"),
            "digit_agrees": part["agreement_with_source"].get("digit"),
            "all_kept": part["preservation"]["all"],
            "success": part["success"],
            "mse_to_exact": part.get("mse_to_exact"),
            **{
                name: part.get(name)
                for name in ("realism_frechet", "composition_l1_1", "composition_l1_10", "reversibility_l1")
            },
        }

    rows = metrics["all"]["rows"]
    return {
        "strength": strength,
        "method": method,
        "rare": scores("rare"),
        "all": scores("all"),
        "judge_accuracy_on_sources": metrics["judge_accuracy_on_sources"],
        "training_steps": training_steps,
        "train_seconds": None if train_seconds is None else round(train_seconds, 1),
        "generation_images_per_second": round(rows / result["generation_seconds"], 2),
        "generation": {k: result["generation_settings"].get(k) for k in ("steps", "inversion_depth", "guidance")},
    }


def targets(entries: dict[str, Any]) -> dict[str, Any]:
    """Each method at each strength against the targets; the MSE ratio is to ``none`` at the same strength."""
    found = {}
    for key, item in entries.items():
        none = entries.get(f"{item['strength']}|none")
        rare = item["rare"]
        ratio = None
        if none and none["rare"]["mse_to_exact"] and rare["mse_to_exact"] is not None:
            ratio = rare["mse_to_exact"] / none["rare"]["mse_to_exact"]
        found[key] = {
            "effectiveness": bool(
                rare["effectiveness"] is not None and rare["effectiveness"] >= TARGETS["effectiveness"]
            ),
            "digit_kept": bool(rare["digit_kept"] is not None and rare["digit_kept"] >= TARGETS["digit_kept"]),
            "mse_ratio_to_none": ratio,
            "mse_target": bool(ratio is not None and ratio <= TARGETS["mse_ratio_to_none"]),
        }
    return found


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(results: dict[str, Any]) -> str:
    header = [
        "| strength | method | rare edits | effectiveness | digit kept | digit agrees | all kept | MSE to exact | "
        "MSE / none | all edits: effectiveness | digit kept | MSE | judge digit acc. | train s | gen img/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = list(METHODS)
    lines = []
    for key, item in sorted(
        results["entries"].items(), key=lambda kv: (kv[1]["strength"], order.index(kv[1]["method"]))
    ):
        rare, every = item["rare"], item["all"]
        ratio = results["targets"].get(key, {}).get("mse_ratio_to_none")
        lines.append(
            f"| {item['strength']} | {item['method']} | {rare['rows']} | {_fmt(rare['effectiveness'])} | "
            f"{_fmt(rare['digit_kept'])} | {_fmt(rare.get('digit_agrees'))} | {_fmt(rare['all_kept'])} | "
            f"{_fmt(rare['mse_to_exact'], 4)} | "
            f"{_fmt(ratio, 2)} | {_fmt(every['effectiveness'])} | {_fmt(every['digit_kept'])} | "
            f"{_fmt(every['mse_to_exact'], 4)} | {_fmt(item['judge_accuracy_on_sources'].get('digit'))} | "
            f"{_fmt(item['train_seconds'], 0)} | {_fmt(item['generation_images_per_second'], 1)} |"
        )
    return "\n".join([*header, *lines])


def throughput(data: Path, args: argparse.Namespace) -> dict[str, Any]:
    """CUDA only: cfgen's training loop against a plain loop of the same UNet and conditioning, in bf16."""
    preset = PRESETS[args.preset]
    batch = preset["batch_size"]
    rows = read_imagefolder(data).split("train")
    generator = Generator.create(
        rows.schema(), ImageFormat((28, 28), "RGB"), preset["architecture"], prediction_type=preset["prediction_type"]
    )
    device = torch.device("cuda")
    modules = generator.modules().to(device)
    images = torch.randn(batch, 3, 28, 28, device=device)
    conditions = generator.conditions(rows)[:batch].to(device)
    timesteps = torch.randint(0, 1000, (batch,), device=device)

    with FlopCounterMode(display=False) as counter:
        generator.predict(images, timesteps, conditions)
    train_flops = 3 * counter.get_total_flops()  # forward + backward (twice the forward)

    # plain loop: the same UNet and attribute encoder, AdamW, bf16 autocast, nothing else
    optimizer = torch.optim.AdamW(modules.parameters(), lr=1e-4)
    noise_scheduler = generator.scheduler
    alphas = noise_scheduler.alphas_cumprod.to(device)

    def step() -> None:
        noise = torch.randn_like(images)
        t = torch.randint(0, 1000, (batch,), device=device)
        a = alphas[t][:, None, None, None]
        noisy = a.sqrt() * images + (1 - a).sqrt() * noise
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.mse_loss(generator.predict(noisy, t, conditions).float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(10):
        step()
    torch.cuda.synchronize()
    started, count = time.perf_counter(), 100
    for _ in range(count):
        step()
    torch.cuda.synchronize()
    plain = count * batch / (time.perf_counter() - started)

    # cfgen's training: two runs that differ only in their number of steps, so start-up cancels out
    seconds = {}
    for steps in (20, 120):
        out = Path(args.work) / f"throughput-{steps}"
        started = time.perf_counter()
        train_generator(data, out, preset=args.preset, steps=steps, checkpoint_every=0, sample_every=0,
                        mixed_precision="bf16", overwrite=True)  # fmt: skip
        seconds[steps] = time.perf_counter() - started
    cfgen_rate = 100 * batch / (seconds[120] - seconds[20])
    name = torch.cuda.get_device_name()
    peak = next((value for key, value in PEAK_BF16.items() if key in name), None)
    return {
        "device": name,
        "architecture": preset["architecture"],
        "batch_size": batch,
        "train_flops_per_image": train_flops / batch,
        "plain_loop_images_per_second": round(plain, 1),
        "cfgen_training_images_per_second": round(cfgen_rate, 1),
        "plain_loop_mfu_bf16": None if peak is None else plain * train_flops / batch / peak,
        "cfgen_mfu_bf16": None if peak is None else cfgen_rate * train_flops / batch / peak,
        "peak_bf16_flops": peak,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    measure_throughput = torch.cuda.is_available() and not args.skip_throughput
    if args.train_seconds and not measure_throughput:
        sys.exit("--train-seconds needs a GPU (it sets the steps from the CUDA throughput) and no --skip-throughput")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    args.training_steps = PRESETS[args.preset]["steps"]
    speed = None
    if measure_throughput:  # first, so that --train-seconds can use it
        speed = throughput(prepare_data(work, args.strengths[0], args)[0], args)
        if args.train_seconds:
            images = args.train_seconds * speed["cfgen_training_images_per_second"]
            args.training_steps = min(args.training_steps, max(1, int(images / speed["batch_size"])))
    settings = {
        "preset": args.preset,
        "recipe": preset_recipe(args.preset),
        # only a cut preset's steps: they follow a measured throughput, so a run of them starts the file afresh
        **({"training_steps": args.training_steps} if args.training_steps != PRESETS[args.preset]["steps"] else {}),
        "train_size": args.train_size,
        "test_size": args.test_size,
        "intervention": INTERVENTION,
        "judge_steps": args.judge_steps,
        "generation": {
            "steps": args.steps or DEFAULT_STEPS,
            "inversion_depth": args.inversion_depth or DEFAULT_INVERSION_DEPTH,
            "guidance": args.guidance or "default",
        },
    }
    results = load_results(args.results, settings, "generator: colour edits on colored digits")
    results["machine"] = machine()
    results["commands"] = [*results.get("commands", []), " ".join(["python", *sys.argv])]
    if speed is not None:
        results["throughput"] = speed
        write_json(args.results, results)
        print(json.dumps(speed, indent=2))
    for strength in args.strengths:
        data, exact = prepare_data(work, strength, args)
        for method in args.methods:
            generator, seconds = train(work, data, strength, method, args)
            result = evaluate(work, data, exact, generator, args)
            results["entries"][f"{strength}|{method}"] = entry(strength, method, result, args.training_steps, seconds)
            results["targets"] = targets(results["entries"])
            write_json(args.results, results)
            print(table({"entries": {f"{strength}|{method}": results["entries"][f"{strength}|{method}"]},
                         "targets": results["targets"]}).splitlines()[-1])  # fmt: skip
    print()
    print(table(results))
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
