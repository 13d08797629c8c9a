"""Argument types and option groups that several subcommands share."""

import argparse

from cfgen.data.adapters import FORMATS


def column_list(text: str) -> list[str]:
    """A comma-separated list of names."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of names")
    return names


def kind_overrides(text: str) -> dict[str, str]:
    """``name=kind,name=kind``."""
    kinds = {}
    for part in column_list(text):
        name, sep, kind = part.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected name=kind, got {part!r}")
        kinds[name.strip()] = kind.strip()
    return kinds


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """How a stage is told which columns to use and how to read the folder."""
    parser.add_argument("--label", help="label column (default: the dataset card's)")
    parser.add_argument("--attributes", type=column_list, help="attribute columns, comma-separated (default: all)")
    parser.add_argument(
        "--kinds", type=kind_overrides, default={}, help="override inferred kinds, e.g. age=continuous,site=categorical"
    )
    parser.add_argument("--format", default="auto", choices=FORMATS, help="dataset layout (default: detect)")


def add_output_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--out", required=True, help=f"{what} to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
