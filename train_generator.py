"""Train a counterfactual generator: the same as ``cfgen train-generator`` (works under ``accelerate launch``)."""

import sys

from cfgen.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-generator", *sys.argv[1:]]))
