"""Measure how confounded a dataset's attributes are: the same as ``cfgen measure``."""

import sys

from cfgen.cli import main

if __name__ == "__main__":
    sys.exit(main(["measure", *sys.argv[1:]]))
