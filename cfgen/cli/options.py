"""Argument types and option groups that several subcommands share."""

import argparse
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the commands that need no torch import none through this module
    from accelerate import PartialState

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
    add_format_argument(parser)


def add_format_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", default="auto", choices=FORMATS, help="dataset layout (default: detect)")


def add_output_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--out", required=True, help=f"{what} to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")


class Renamed(argparse.Action):
    """An old spelling of a flag: still accepted, hidden from --help, with a note naming the new one."""

    def __init__(self, option_strings: list[str], dest: str, new: str, **kwargs) -> None:
        self.new = new
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"note: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def add_renamed(
    parser: argparse.ArgumentParser, old: str, new: str, dest: str, type: type | None = None, const: object = None
) -> None:
    """Accept ``old`` for the flag now called ``new`` (one flag name per meaning across commands); an old
    switch without a value (``const`` given) stands for ``new`` with that value."""
    if const is not None:
        parser.add_argument(old, dest=dest, action=Renamed, new=new, nargs=0, const=const, default=argparse.SUPPRESS)
    else:
        parser.add_argument(old, dest=dest, type=type, action=Renamed, new=new, default=argparse.SUPPRESS)


def finish(state: "PartialState", message: str) -> None:
    """Print ``message`` on the main process; with several processes, wait for all and leave through
    ``os._exit(0)``: torch's gloo teardown sometimes aborts a rank that has finished (environment.md)."""
    if state.is_main_process:
        print(message)
    if state.num_processes > 1:
        state.wait_for_everyone()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
