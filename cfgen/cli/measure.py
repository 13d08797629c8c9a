"""``cfgen measure``: how confounded a dataset's attributes are."""

import argparse

from cfgen.cli.options import add_dataset_arguments, add_output_arguments
from cfgen.confounding.folders import measure_folders
from cfgen.confounding.report import format_report
from cfgen.errors import CfgenError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "folders", nargs="*", metavar="DATA", help="dataset folder(s); several are joined (e.g. data + counterfactuals)"
    )
    parser.add_argument("--data", nargs="+", help="the same as the DATA folders, as the other commands take them")
    add_output_arguments(parser, "report folder")
    add_dataset_arguments(parser)
    parser.add_argument("--split", help="rows to measure: a split name or 'all' (default: train when present)")
    parser.add_argument("--reference", nargs="+", help="folder(s) to compare with, measured the same way")
    parser.add_argument("--skip-image-check", action="store_true", help="read only the metadata, not the images")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--confidence", type=float, default=0.95, help="interval level (default 0.95)")
    parser.add_argument("--min-group-size", type=int, default=10, help="groups below this are flagged tiny")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")


def run(args: argparse.Namespace) -> None:
    if bool(args.folders) == bool(args.data):
        raise CfgenError("give the dataset folder(s) once: as DATA or as --data DATA")
    report = measure_folders(
        args.folders or args.data,
        args.out,
        label=args.label,
        attributes=args.attributes,
        kinds=args.kinds,
        data_format=args.format,
        split=args.split,
        reference=args.reference,
        check_images=not args.skip_image_check,
        n_bootstrap=args.bootstrap,
        confidence=args.confidence,
        min_group_size=args.min_group_size,
        seed=args.seed,
        overwrite=args.overwrite,
        progress=True,
    )
    print(format_report(report))
    print(f"\nwrote {args.out}/confounding.json and confounding.png")
