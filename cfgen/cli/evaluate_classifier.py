"""``cfgen evaluate-classifier``: score a trained classifier on a dataset's splits."""

import argparse
from pathlib import Path

from cfgen.classifier.config import DEFAULT_MIN_GROUP_SIZE
from cfgen.classifier.inference import evaluate_classifier
from cfgen.cli.options import add_format_argument, column_list
from cfgen.io import write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``evaluate-classifier`` options."""
    parser.add_argument("--model", required=True, help="classifier folder (CLF, its first seed) or CLF/seed-S")
    parser.add_argument("--data", required=True, help="dataset folder, any layout cfgen reads")
    parser.add_argument("--splits", type=column_list, help="comma-separated (default: every split)")
    parser.add_argument(
        "--spurious", type=column_list, help="attributes that define groups (default: those the model was trained with)"
    )
    add_format_argument(parser)
    parser.add_argument("--resize", type=int, help="resize images to NxN RGB (the classifier's size)")
    parser.add_argument(
        "--min-group-size",
        type=int,
        default=DEFAULT_MIN_GROUP_SIZE,
        help="smallest group that competes for the worst (default %(default)s)",
    )
    parser.add_argument("--out", help="also write the figures to this JSON file")


def run(args: argparse.Namespace) -> None:
    result = evaluate_classifier(
        args.model, args.data, args.splits, args.spurious, args.format, args.resize, args.min_group_size
    )
    for name, figures in result["splits"].items():
        worst = figures["worst_group_accuracy"]
        worst_text = "-" if worst is None else f"{worst:.3f} ({figures['worst_group']})"
        print(f"{name}: {figures['size']} images, accuracy {figures['accuracy']:.3f}, worst group {worst_text}")
        for group, scores in figures["groups"].items():
            print(f"  {group}: {scores['accuracy']:.3f} of {scores['count']}")
    if args.out:
        write_json(Path(args.out), result)
        print(f"wrote {args.out}")
