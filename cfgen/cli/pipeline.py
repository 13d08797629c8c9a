"""``cfgen pipeline``: every stage on the built-in default dataset or your own."""

import argparse

from cfgen.cli.options import column_list
from cfgen.pipeline import DEFAULT_METHODS, PRESETS, run_pipeline
from cfgen.runtime import MIXED_PRECISION_CHOICES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="run folder to write (default runs/demo)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument(
        "--preset",
        default="quick",
        choices=list(PRESETS),
        help="quick: minutes on a CPU (default); standard: about an hour on a CPU; full: a GPU",
    )
    parser.add_argument("--data", help="your dataset folder (default: build the built-in colored digits)")
    parser.add_argument("--label", help="label column of --data (default: its card's)")
    parser.add_argument("--attributes", type=column_list, help="attributes of --data for the generator")
    parser.add_argument(
        "--spurious", type=column_list, help="attributes to edit and debias (default: fg_color, or all --attributes)"
    )
    parser.add_argument(
        "--methods", type=column_list, default=list(DEFAULT_METHODS), help="classifier methods (default erm,cf-reg)"
    )
    parser.add_argument("--strength", type=float, default=0.99, help="digit-colour association of the built-in data")
    parser.add_argument(
        "--mixed-precision",
        choices=MIXED_PRECISION_CHOICES,
        default="auto",
        help="every stage's precision; auto (default): bf16 on CUDA GPUs with bf16 and CPUs with AMX, else no",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every stage")
    parser.add_argument("--resize", type=int, help="read every image as an NxN RGB square (data of mixed sizes)")


def run(args: argparse.Namespace) -> None:
    out = run_pipeline(
        args.out,
        data=args.data,
        label=args.label,
        attributes=args.attributes,
        spurious=args.spurious,
        methods=args.methods,
        preset=args.preset,
        strength=args.strength,
        seed=args.seed,
        mixed_precision=args.mixed_precision,
        resize=args.resize,
        overwrite=args.overwrite,
    )
    print(f"\ndone: read {out / 'report.md'}")
