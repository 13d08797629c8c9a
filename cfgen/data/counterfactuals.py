"""Counterfactual dataset folders: the input format plus provenance columns.

A counterfactual row keeps its source's columns, with the intervened attributes set to their new
values, and adds where it came from, so that classifiers can pair an image with its counterfactuals
and the meter can check that the association is gone:

    cf_source          file_name of the source image in the source dataset
    cf_source_row      the source image's row in the source metadata.csv
    cf_intervened      the intervened attributes, joined by "+"
    cf_factual         their factual values, as "a=x,b=y"
    cf_counterfactual  their new values, as "a=x,b=y"
    cf_generator       what made the image ("exact" renderer or a generator folder)

The card (cfgen_dataset.json) records the source folder and a digest of its table, whatever its
layout (``dataset_digest``), so a stage can tell whether a counterfactual folder belongs to a dataset.
"""

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cfgen.data.hub import write_dataset
from cfgen.data.schema import Schema
from cfgen.data.table import CARD_FILE, FILE_COLUMN, METADATA_FILE, MetadataTable, read_imagefolder, write_card
from cfgen.errors import CfgenError
from cfgen.interventions import Intervention, Request, format_assignment

PROVENANCE_COLUMNS = ("cf_source", "cf_source_row", "cf_intervened", "cf_factual", "cf_counterfactual", "cf_generator")


def dataset_digest(table: MetadataTable) -> str:
    """SHA-256 of a dataset's table, every column in row order, whatever layout it was read from: the
    identity a counterfactual folder (and a judge cache) refers to."""
    digest = hashlib.sha256()
    for name in sorted(table.columns):
        digest.update(name.encode() + b"\0" + "\x1f".join(map(str, table.columns[name])).encode() + b"\0")
    return digest.hexdigest()


def made_from(card: dict, table: MetadataTable) -> bool:
    """Whether a counterfactual folder's card names ``table`` as its source. Folders written before the
    digest covered every layout recorded the SHA-256 of the source's metadata.csv instead."""
    entry = card.get("counterfactuals") or {}
    if "source_sha256" in entry:
        return entry["source_sha256"] == dataset_digest(table)
    metadata = Path(table.source) / METADATA_FILE
    recorded = entry.get("source_metadata_sha256")
    return recorded is not None and metadata.is_file() and recorded == hashlib.sha256(metadata.read_bytes()).hexdigest()


def image_name(request_index: int) -> str:
    """Where a request's image goes: stable across processes and resumed runs."""
    return f"images/{request_index:07d}.png"


def counterfactual_columns(
    source: MetadataTable, requests: Sequence[Request], indices: Sequence[int], generator: str
) -> dict[str, list[str]]:
    """Metadata columns for the requests at ``indices`` of a plan."""
    rows = []
    for i in indices:
        request = requests[i]
        row = {name: str(values[request.row]) for name, values in source.columns.items()}
        factual = {name: row[name] for name in request.target}
        row.update(request.target)
        row.update(
            {
                FILE_COLUMN: image_name(i),
                "cf_source": str(source.columns[FILE_COLUMN][request.row]),
                "cf_source_row": str(request.row),
                "cf_intervened": "+".join(request.target),
                "cf_factual": format_assignment(factual),
                "cf_counterfactual": format_assignment(request.target),
                "cf_generator": generator,
            }
        )
        rows.append(row)
    names = [*source.columns, *PROVENANCE_COLUMNS]
    return {name: [row[name] for row in rows] for name in names}


def write_counterfactual_folder(
    folder: Path,
    source_dir: str | Path,
    source: MetadataTable,
    requests: Sequence[Request],
    intervention: Intervention,
    generator: str,
    schema: Schema,
) -> None:
    """Write the tables and the card of a folder whose images ``image_name(i)`` are in place (they move into
    their source's split's folder, hub.py). The card names the label and attributes of ``schema``, the
    variables the counterfactuals were made under."""
    columns = counterfactual_columns(source, requests, range(len(requests)), generator)
    write_dataset(folder, columns, string_columns=PROVENANCE_COLUMNS)
    card = {"label": schema.label.name, "attributes": [a.name for a in schema.attributes]}
    if "vocabulary" in source.card:
        card["vocabulary"] = source.card["vocabulary"]
    card["counterfactuals"] = {
        "source": str(Path(source_dir).resolve()),
        "source_sha256": dataset_digest(source),
        "intervention": str(intervention),
        "generator": generator,
    }
    write_card(folder, card)


def read_counterfactuals(
    folder: str | Path, data: str | Path, table: MetadataTable, training_rows: np.ndarray
) -> tuple[MetadataTable, np.ndarray]:
    """A counterfactual folder's rows, checked to come from ``data`` (read as ``table``), and each one's source
    as an index into ``training_rows`` (row indices of ``table``; -1 for a source outside them)."""
    cf = read_imagefolder(folder)
    entry = cf.card.get("counterfactuals")
    if not entry:
        raise CfgenError(
            f"{folder} is not a counterfactual folder (its {CARD_FILE} has no 'counterfactuals' entry); "
            "make one with `cfgen generate`"
        )
    if not made_from(cf.card, table):
        raise CfgenError(
            f"{folder} was made from another dataset ({entry.get('source', '?')}): the digest of its source's "
            f"table does not match {data}'s"
        )
    rows_text = cf.column("cf_source_row")
    try:
        rows = rows_text.astype(np.int64)
    except ValueError:
        raise CfgenError(f"{folder}: cf_source_row holds values that are not row numbers") from None
    bad = np.flatnonzero((rows < 0) | (rows >= len(table)))
    if bad.size:
        raise CfgenError(f"{folder}: cf_source_row {rows[bad[0]]} is outside the dataset's rows 0-{len(table) - 1}")
    mismatch = np.flatnonzero(table.columns[FILE_COLUMN][rows] != cf.column("cf_source"))
    if mismatch.size:
        raise CfgenError(
            f"{folder}: row {mismatch[0] + 1} names source {str(cf.column('cf_source')[mismatch[0]])!r}, but dataset "
            f"row {rows[mismatch[0]]} is {str(table.columns[FILE_COLUMN][rows[mismatch[0]]])!r}"
        )
    position = np.full(len(table), -1, dtype=np.int64)
    position[training_rows] = np.arange(len(training_rows))
    return cf, position[rows]
