"""The ``cfgen`` command: one subcommand per stage.

Each stage module defines ``add_arguments(parser)`` and ``run(args)``; this file only registers
them. Bad input raises ``CfgenError``, which ``main`` prints as one ``error:`` line, exit code 2.
"""

import argparse
import importlib
import sys
from collections.abc import Sequence

from cfgen.errors import CfgenError

# subcommand -> (module holding add_arguments/run, one-line help)
COMMANDS = {
    "make-dataset": ("cfgen.data.colored_mnist", "build a built-in confounded dataset"),
    "measure": ("cfgen.confounding.command", "measure how confounded a dataset's attributes are"),
    "train-generator": ("cfgen.generator.training", "train a counterfactual generator (diffusers UNet)"),
    "generate": ("cfgen.generator.generation", "write a counterfactual dataset (trained generator or exact)"),
    "tune-inference": ("cfgen.inference_tuning", "choose a generator's inference settings on validation data"),
    "evaluate-counterfactuals": ("cfgen.counterfactual_metrics", "score a counterfactual dataset"),
    "train-classifier": ("cfgen.classifier.command", "train a debiased classifier (erm, cf-reg, group-dro, ...)"),
    "pipeline": ("cfgen.pipeline", "run every stage on the built-in default dataset or your own"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cfgen", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = commands.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command)
        command.set_defaults(handler=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cfgen`` command and the top-level scripts."""
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except CfgenError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
