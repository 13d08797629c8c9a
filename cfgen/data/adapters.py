"""Read the standard layouts of public datasets into a ``MetadataTable``.

- ``imagefolder``: ``metadata.csv`` with ``file_name`` (cfgen's own format);
- ``celeba``: the layout torchvision's ``CelebA(download=False)`` reads: ``img_align_celeba/``,
  ``list_attr_celeba.txt`` (-1/1, read as 0/1) and ``list_eval_partition.txt`` (0/1/2), in the
  given folder or in its ``celeba/`` subfolder;
- ``waterbirds``: ``metadata.csv`` with ``img_filename``, ``y``, ``place`` and ``split`` (0/1/2);
- ``hub``: Hugging Face's imagefolder layouts without cfgen's table: a ``metadata.csv`` or
  ``metadata.jsonl`` beside each split's images (``train/metadata.jsonl``, ...), the folder holding
  it naming the split, or one at the top for a folder of one split.

Splits become train / validation / test in the public datasets' layouts.
"""

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cfgen.data.table import (
    FILE_COLUMN,
    METADATA_FILE,
    SPLIT_COLUMN,
    MetadataTable,
    open_csv,
    read_imagefolder,
    split_name,
)
from cfgen.errors import CfgenError

SPLIT_NAMES = {"0": "train", "1": "validation", "2": "test"}


def read_celeba(root: str | Path) -> MetadataTable:
    """CelebA's 40 binary attributes and official split; no default label (choose one)."""
    root = Path(root)
    base = root / "celeba" if (root / "celeba" / "list_attr_celeba.txt").is_file() else root
    attr_path, split_path, images = (
        base / "list_attr_celeba.txt",
        base / "list_eval_partition.txt",
        base / "img_align_celeba",
    )
    for path in (attr_path, split_path, images):
        if not path.exists():
            raise CfgenError(f"{base} is not a CelebA folder: {path.name} is missing")
    lines = attr_path.read_text().split("\n")
    names = lines[1].split()
    rows = [line.split() for line in lines[2:] if line.strip()]
    bad = next((i for i, row in enumerate(rows) if len(row) != len(names) + 1), None)
    if bad is not None:
        raise CfgenError(f"{attr_path} line {bad + 3} has {len(rows[bad]) - 1} values for {len(names)} attributes")
    table = np.array(rows, dtype=str)
    files = table[:, 0]
    split_of = dict(line.split() for line in split_path.read_text().split("\n") if line.strip())
    missing = [f for f in files if f not in split_of]
    if missing:
        raise CfgenError(f"{split_path} has no split for {missing[0]} ({len(missing)} images lack one)")
    columns = {FILE_COLUMN: files, SPLIT_COLUMN: np.array([SPLIT_NAMES[split_of[f]] for f in files], dtype=str)}
    for j, name in enumerate(names, start=1):
        columns[name] = np.where(table[:, j] == "1", "1", "0")
    prefix = f"{images.resolve()}/"
    return MetadataTable(np.array([prefix + f for f in files], dtype=object), columns, str(root))


def read_waterbirds(root: str | Path) -> MetadataTable:
    """Waterbirds: label ``y`` (1 = waterbird) and attribute ``place`` (1 = water background)."""
    root = Path(root)
    if not (root / METADATA_FILE).is_file():
        raise CfgenError(f"{root} is not a Waterbirds folder: it has no {METADATA_FILE}")
    with open_csv(root / METADATA_FILE) as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise CfgenError(f"{root / METADATA_FILE} lists no images: the dataset is empty")
    missing = {"img_filename", "y", "place", "split"} - set(rows[0])
    if missing:
        raise CfgenError(f"{root} is not a Waterbirds folder: metadata.csv lacks {', '.join(sorted(missing))}")
    bad = next((r["split"] for r in rows if r["split"] not in SPLIT_NAMES), None)
    if bad is not None:
        raise CfgenError(f"Waterbirds split {bad!r} is not one of 0, 1, 2")
    files = np.array([r["img_filename"] for r in rows], dtype=str)
    columns = {
        FILE_COLUMN: files,
        SPLIT_COLUMN: np.array([SPLIT_NAMES[r["split"]] for r in rows], dtype=str),
        "y": np.array([r["y"] for r in rows], dtype=str),
        "place": np.array([r["place"] for r in rows], dtype=str),
    }
    prefix = f"{root.resolve()}/"
    paths = np.array([prefix + f for f in files], dtype=object)
    return MetadataTable(paths, columns, str(root), {"label": "y", "attributes": ["place"]})


HUB_METADATA_NAMES = ("metadata.csv", "metadata.jsonl")


def hub_metadata_files(root: Path) -> list[Path]:
    """The metadata files of a Hugging Face imagefolder layout: at the top, or one level or two below."""
    found = [root / name for name in HUB_METADATA_NAMES if (root / name).is_file()]
    return found or sorted(p for pattern in ("*/", "*/*/") for name in HUB_METADATA_NAMES
                           for p in root.glob(pattern + name))  # fmt: skip


def read_hub(root: str | Path) -> MetadataTable:
    """Hugging Face imagefolder metadata files as one table: paths relative to each file's folder, the
    folder's name as the split (none for a file at the top), every value as text."""
    root = Path(root)
    files = hub_metadata_files(root)
    if not files:
        raise CfgenError(f"{root} is not a Hugging Face imagefolder: no metadata.csv or metadata.jsonl in it or below")
    rows: list[dict[str, str]] = []
    for path in files:
        if path.suffix == ".jsonl":
            records = [_json_line(path, number, line) for number, line in
                       enumerate(path.read_text(encoding="utf-8").splitlines(), start=1) if line.strip()]  # fmt: skip
        else:
            with open_csv(path) as handle:
                records = list(csv.DictReader(handle))
        for number, record in enumerate(records, start=1):
            if FILE_COLUMN not in record:
                raise CfgenError(f"{path} row {number} has no {FILE_COLUMN!r}")
            row = {name: "" if value is None else str(value) for name, value in record.items()}
            row[FILE_COLUMN] = (path.parent / row[FILE_COLUMN]).relative_to(root).as_posix()
            if path.parent != root:
                row.setdefault(SPLIT_COLUMN, split_name(path.parent.name))
            rows.append(row)
    if not rows:
        raise CfgenError(f"the metadata files of {root} list no images: the dataset is empty")
    names = list(dict.fromkeys(name for row in rows for name in row))
    lacking = next(((row, name) for row in rows for name in names if name not in row), None)
    if lacking is not None:
        raise CfgenError(f"{root}: the row of {lacking[0][FILE_COLUMN]} has no {lacking[1]!r}, which other rows have")
    columns = {name: np.array([row[name] for row in rows], dtype=str) for name in names}
    prefix = f"{root.resolve()}/"
    return MetadataTable(np.array([prefix + f for f in columns[FILE_COLUMN]], dtype=object), columns, str(root))


def _json_line(path: Path, number: int, line: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise CfgenError(f"{path} line {number} is not JSON: {error.msg}") from None
    if not isinstance(record, dict):
        raise CfgenError(f"{path} line {number} is not a JSON object")
    return record


READERS: dict[str, Callable[[str | Path], MetadataTable]] = {
    "imagefolder": read_imagefolder,
    "celeba": read_celeba,
    "waterbirds": read_waterbirds,
    "hub": read_hub,
}
FORMATS = ("auto", *READERS)


def detect_format(root: str | Path) -> str:
    """Guess the layout of a folder from the files it holds."""
    root = Path(root)
    if not root.is_dir():
        raise CfgenError(f"dataset folder {root} does not exist")
    metadata = root / METADATA_FILE
    if metadata.is_file():
        with open_csv(metadata) as handle:
            header = next(csv.reader(handle), [])
        return "waterbirds" if "img_filename" in header and FILE_COLUMN not in header else "imagefolder"
    if (root / "list_attr_celeba.txt").is_file() or (root / "celeba" / "list_attr_celeba.txt").is_file():
        return "celeba"
    if hub_metadata_files(root):
        return "hub"
    raise CfgenError(
        f"{root} has no metadata.csv (imagefolder and waterbirds layouts), no list_attr_celeba.txt "
        "(celeba layout) and no metadata.csv or metadata.jsonl in a split's folder (hub layout), so it is not a "
        "dataset folder"
    )


def open_dataset(root: str | Path, data_format: str = "auto") -> MetadataTable:
    """Read a dataset folder of any supported layout."""
    if data_format not in FORMATS:
        raise CfgenError(f"unknown dataset format {data_format!r}; valid formats: {', '.join(FORMATS)}")
    if data_format == "auto":
        data_format = detect_format(root)
    return READERS[data_format](root)


def open_datasets(roots: list[str | Path], data_format: str = "auto") -> MetadataTable:
    """Several folders joined, e.g. a dataset and its counterfactuals."""
    return MetadataTable.concat([open_dataset(root, data_format) for root in roots])
