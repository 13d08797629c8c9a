"""Measuring dataset folders (``cfgen measure``): read them, measure, compare, write the report."""

from collections.abc import Sequence
from pathlib import Path

from cfgen.confounding.measure import measure
from cfgen.confounding.report import compare, save_report
from cfgen.data.adapters import open_datasets
from cfgen.data.images import scan_images
from cfgen.data.table import MetadataTable
from cfgen.io import atomic_output_dir, check_output_dir, write_run_record


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
        return table.split(split if split is not None else table.training_split)

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
