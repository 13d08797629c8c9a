"""``cfgen measure`` / ``measure_confounding.py``: read folders, measure, compare, write the report."""

import argparse
from collections.abc import Sequence
from pathlib import Path

from cfgen.cli_options import add_dataset_arguments, add_output_arguments
from cfgen.confounding.measure import measure
from cfgen.confounding.report import compare, format_report, save_report
from cfgen.data.adapters import open_datasets
from cfgen.data.images import scan_images
from cfgen.data.table import MetadataTable
from cfgen.errors import CfgenError
from cfgen.io import atomic_output_dir, check_output_dir, write_run_record


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


def measure_folders(
    data: Sequence[str | Path],
    out: str | Path,
    *,
    label: str | None = None,
    attributes: Sequence[str] | None = None,
    kinds: dict[str, str] | None = None,
    data_format: str = "auto",
    split: str | None = None,
    reference: Sequence[str | Path] | None = None,
    check_images: bool = True,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    min_group_size: int = 10,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = False,
) -> dict:
    """Measure the joined folders (optionally against reference folders) and write the report to ``out``."""
    out = Path(out)
    check_output_dir(out, overwrite)
    settings = {"n_bootstrap": n_bootstrap, "confidence": confidence, "seed": seed, "min_group_size": min_group_size}

    def rows(folders: Sequence[str | Path]) -> MetadataTable:
        table = open_datasets(list(folders), data_format)
        return table.split(split if split is not None else ("train" if "train" in table.splits else None))

    table = rows(data)
    schema = table.schema(label, attributes, kinds)
    if check_images:
        scan_images(table)
    report = measure(table, schema, **settings, progress=progress)
    report["data"] = [str(folder) for folder in data]
    if reference:
        reference_table = rows(reference)
        names = [a.name for a in schema.attributes if a.name in reference_table.columns]
        reference_schema = reference_table.schema(schema.label.name, names, kinds)
        if check_images:
            scan_images(reference_table)
        reference_report = measure(reference_table, reference_schema, **settings, progress=progress)
        reference_report["data"] = [str(folder) for folder in reference]
        report = compare(report, reference_report)
    with atomic_output_dir(out, overwrite) as staging:
        save_report(report, staging)
        write_run_record(staging, {"data": [str(d) for d in data], "split": split, **settings}, seed)
    return report
