"""``cfgen make-dataset``: build a built-in confounded dataset."""

import argparse
from pathlib import Path

from cfgen.datasets.colored_mnist.rendering import (
    BUILTIN_NAME,
    DEFAULT_SIZES,
    IMAGE_SIZES,
    SPLITS,
    ColoredMNISTConfig,
    make_colored_mnist,
)


def _tie(text: str) -> tuple[str, str, float]:
    """``parent:child=strength`` from the command line."""
    pair, sep, strength = text.partition("=")
    parent, colon, child = pair.partition(":")
    try:
        if not (sep and colon):
            raise ValueError
        return parent.strip(), child.strip(), float(strength)
    except ValueError:
        message = f"expected parent:child=strength, e.g. digit:fg_color=0.9, not {text!r}"
        raise argparse.ArgumentTypeError(message) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``cfgen make-dataset colored-mnist``."""
    parser.add_argument("name", choices=[BUILTIN_NAME], help="which built-in dataset")
    parser.add_argument("--out", required=True, help="dataset folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--strength", type=float, default=0.9, help="digit -> fg_color association (0..1)")
    parser.add_argument(
        "--tie", type=_tie, action="append", help="parent:child=strength, repeatable; replaces the --strength tie"
    )
    for split in SPLITS:
        parser.add_argument(
            f"--{split.replace('_', '-')}-size", type=int, default=DEFAULT_SIZES[split], help=f"rows in {split}"
        )
    parser.add_argument("--image-size", type=int, default=28, choices=IMAGE_SIZES, help="side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampled rows")


def run(args: argparse.Namespace) -> None:
    sizes = {split: getattr(args, f"{split}_size") for split in SPLITS}
    ties = tuple(args.tie) if args.tie else None
    config = ColoredMNISTConfig(args.strength, ties, sizes, args.image_size, args.seed)
    print(f"wrote {make_colored_mnist(config, Path(args.out), overwrite=args.overwrite)}")
