"""The ``cfgen`` command: one subcommand per stage.

Each command is a module of this package with ``add_arguments(parser)`` and ``run(args)``, imported
only when chosen (``cfgen --help`` loads neither torch nor diffusers); the library never parses
arguments. Bad input raises ``CfgenError``, which ``main`` prints as one ``error:`` line, exit code 2.
"""

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from importlib import metadata

from cfgen.errors import CfgenError

# subcommand -> (module of cfgen.cli holding add_arguments/run, one-line help), in the order of the stages
COMMANDS = {
    "make-dataset": ("make_dataset", "build a built-in confounded dataset"),
    "measure": ("measure", "measure how confounded a dataset's attributes are"),
    "train-generator": ("train_generator", "train a counterfactual generator (diffusers UNet)"),
    "tune-inference": ("tune_inference", "choose a generator's inference settings on validation data"),
    "generate": ("generate", "write a counterfactual dataset (trained generator or exact)"),
    "evaluate-counterfactuals": ("evaluate_counterfactuals", "score a counterfactual dataset"),
    "train-classifier": ("train_classifier", "train a debiased classifier (erm, cf-reg, group-dro, ...)"),
    "evaluate-classifier": ("evaluate_classifier", "score a trained classifier on a dataset's splits"),
    "pipeline": ("pipeline", "run every stage on the built-in default dataset or your own"),
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every flag's default in --help, unless its help already says it (or it has none to show)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        empty = action.default in (None, False, argparse.SUPPRESS) or action.default in ((), {}, [])
        if "default" in text or empty or action.required:
            return text
        return super()._get_help_string(action)


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the ``chosen`` command's module is imported (the others need not load torch stacks)."""
    parser = argparse.ArgumentParser(prog="cfgen", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"cfgen {metadata.version('cfgen')}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        command = commands.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        if name == chosen:
            module = importlib.import_module(f"{__name__}.{module_name}")
            module.add_arguments(command)
            command.set_defaults(handler=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cfgen`` command and the top-level scripts."""
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((word for word in argv if not word.startswith("-")), None)
    args = build_parser(chosen).parse_args(argv)
    try:
        args.handler(args)
    except CfgenError as error:
        if os.environ.get("RANK", "0") == "0":  # under `accelerate launch`, every process meets the same error
            print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
