"""``cfgen evaluate-counterfactuals``: score a counterfactual dataset."""

import argparse
from pathlib import Path

from cfgen.cli.options import add_format_argument, add_output_arguments, column_list
from cfgen.counterfactuals.metrics import (
    DEFAULT_RARE_RATIO,
    DEFAULT_SOUNDNESS_IMAGES,
    METRICS_FILE,
    evaluate_counterfactuals,
)
from cfgen.io import atomic_output_dir, write_json, write_run_record
from cfgen.judges import DEFAULT_JUDGE_BATCH_SIZE, DEFAULT_JUDGE_IMAGES, DEFAULT_JUDGE_STEPS, default_judge_cache

WEAKEST_SHOWN = 3  # source values printed with the lowest success
WEAKEST_MIN_ROWS = 10  # edits a source value needs for its success to be printed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``evaluate-counterfactuals`` options."""
    parser.add_argument("--counterfactuals", required=True, help="counterfactual folder (cfgen generate)")
    parser.add_argument("--data", required=True, help="the dataset folder the counterfactuals were made from")
    add_format_argument(parser)
    parser.add_argument("--resize", type=int, help="read the images as NxN RGB (data of mixed sizes)")
    parser.add_argument(
        "--exact", help="exact counterfactuals of the same edits (built-in datasets: --generator exact)"
    )
    add_output_arguments(parser, "metrics folder")
    parser.add_argument("--label", help="label column (default: the dataset card's)")
    parser.add_argument("--attributes", type=column_list, help="attribute columns (default: the card's, or all)")
    parser.add_argument("--rare-ratio", type=float, default=DEFAULT_RARE_RATIO, help="see docs/generator.md")
    parser.add_argument("--judge-cache", help=f"where judges are kept (default {default_judge_cache()})")
    parser.add_argument("--judge-steps", type=int, default=DEFAULT_JUDGE_STEPS, help="training steps of the judges")
    parser.add_argument("--judge-batch-size", type=int, default=DEFAULT_JUDGE_BATCH_SIZE, help="batch of the judges")
    parser.add_argument("--judge-images", type=int, default=DEFAULT_JUDGE_IMAGES, help="re-rendered (built-in only)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the judges' training")
    parser.add_argument(
        "--soundness-images",
        type=int,
        default=DEFAULT_SOUNDNESS_IMAGES,
        help="edits whose composition and reversibility are measured, when a trained generator made the folder "
        "(0: none)",
    )


def run(args: argparse.Namespace) -> None:
    """``cfgen evaluate-counterfactuals``: write metrics.json and print the headline numbers."""
    with atomic_output_dir(args.out, args.overwrite) as staging:
        metrics = evaluate_counterfactuals(
            args.counterfactuals, args.data, args.exact, args.label, args.attributes, args.judge_cache,
            args.judge_steps, args.judge_batch_size, args.judge_images, args.rare_ratio, args.seed, progress=True,
            soundness_images=args.soundness_images, data_format=args.format, resize=args.resize,
        )  # fmt: skip
        write_json(staging / METRICS_FILE, metrics)
        write_run_record(staging, {k: v for k, v in vars(args).items() if k != "handler"}, seed=args.seed)
    matched, rows = metrics["exact_matched"], metrics["all"]["rows"]
    if matched is not None and matched < rows:
        print(f"note: only {matched} of {rows} counterfactuals have an exact counterpart in {args.exact}; "
              "the figures against exact cover those")  # fmt: skip
    for group in ("all", "rare", "absent"):
        scores = metrics[group]
        line = f"{group:>6}: {scores['rows']} rows, effectiveness {_fmt(scores['effectiveness']['all'])}, "
        line += f"preservation {_fmt(scores['preservation']['all'])}"
        if "mse_to_exact" in scores:
            line += f", MSE to exact {_fmt(scores['mse_to_exact'], 4)}"
        if "stroke_iou" in scores:
            line += f", stroke IoU {_fmt(scores['stroke_iou'])}, width error {_fmt(scores['stroke_width_error'])} px"
            line += f" (change {_fmt(scores['stroke_width_change'], signed=True)})"
            line += f", stroke strength {_fmt(scores['stroke_strength'])} of the exact's"
        line += f", realism (Frechet) {_fmt(scores['realism_frechet'], 2)}"
        print(line)
    weakest = sorted(  # lowest success first, then the most edits
        (cell["success"], -cell["rows"], name, value)
        for name, cells in metrics["all"]["by_source"].items()
        for value, cell in cells.items()
        if cell["rows"] >= WEAKEST_MIN_ROWS
    )[:WEAKEST_SHOWN]
    if weakest:
        cells = (f"{name}={value} {success:.3f} of {-minus_rows}" for success, minus_rows, name, value in weakest)
        print(f"weakest sources (success, edits): {', '.join(cells)}")
    if metrics["soundness_images"]:
        scores = metrics["all"]
        print(f"soundness on {metrics['soundness_images']} edits: composition L1 after 1 edit "
              f"{_fmt(scores['composition_l1_1'], 4)}, after 10 {_fmt(scores['composition_l1_10'], 4)}; "
              f"reversibility L1 {_fmt(scores['reversibility_l1'], 4)}")  # fmt: skip
    print(f"wrote {Path(args.out) / METRICS_FILE}")


def _fmt(value: float | None, digits: int = 3, signed: bool = False) -> str:
    return "n/a" if value is None else f"{value:{'+' if signed else ''}.{digits}f}"
