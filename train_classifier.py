"""Train a debiased classifier: the same as ``cfgen train-classifier`` (see docs/classifier.md)."""

import sys

from cfgen.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-classifier", *sys.argv[1:]]))
