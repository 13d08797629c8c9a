"""The dataset folder: image files plus ``metadata.csv`` (Hugging Face "imagefolder" layout).

A ``MetadataTable`` is the in-memory form every stage reads, whichever layout it came from
(imagefolder, CelebA, Waterbirds): absolute image paths and the other columns as strings. A folder
cfgen writes may carry ``cfgen_dataset.json``, a card naming its default label and attributes and
declaring vocabularies (``"vocabulary": {column: [values]}``), so that a subset in which a value
happens to be absent still encodes every value the same way.
"""

import csv
import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from cfgen.data.schema import Attribute, Schema, declared_attribute, infer_attribute
from cfgen.errors import CfgenError

METADATA_FILE = "metadata.csv"
CARD_FILE = "cfgen_dataset.json"
FILE_COLUMN = "file_name"
SPLIT_COLUMN = "split"
PROVENANCE_PREFIX = "cf_"  # columns cfgen adds to counterfactual datasets
TRAIN_SPLIT = "train"


def split_name(raw: str) -> str:
    """A split name as Hugging Face ``datasets`` accepts it (``\\w+``): ``test-anti``, the built-in
    datasets' name before, reads as ``test_anti``."""
    return re.sub(r"\W+", "_", raw).strip("_") or TRAIN_SPLIT


@dataclass
class MetadataTable:
    """Image paths and string columns of one dataset, or of several folders joined."""

    image_paths: np.ndarray  # absolute paths, as strings
    columns: dict[str, np.ndarray]  # column name -> strings, one per image
    source: str  # where it came from, for messages
    card: dict = field(default_factory=dict)  # defaults from cfgen_dataset.json, if any

    def __len__(self) -> int:
        return len(self.image_paths)

    @property
    def splits(self) -> tuple[str, ...]:
        if SPLIT_COLUMN not in self.columns:
            return ()
        return tuple(sorted(set(self.columns[SPLIT_COLUMN])))

    @property
    def training_split(self) -> str:
        """The rows a stage learns from when no split is named: the train split, or every row of a folder
        without one (``split`` reads "all" as every row)."""
        return TRAIN_SPLIT if TRAIN_SPLIT in self.splits else "all"

    def select(self, mask: np.ndarray) -> "MetadataTable":
        return MetadataTable(
            self.image_paths[mask], {k: v[mask] for k, v in self.columns.items()}, self.source, self.card
        )

    def split(self, name: str | None) -> "MetadataTable":
        """Rows of one split; ``None`` or "all" keeps every row."""
        return self if name in (None, "all") else self.select(self.split_rows(name))

    def split_rows(self, name: str | None) -> np.ndarray:
        """The indices of the rows ``split(name)`` keeps."""
        if name in (None, "all"):
            return np.arange(len(self))
        if name not in self.splits:
            valid = ", ".join((*self.splits, "all")) if self.splits else "all (there is no split column)"
            raise CfgenError(f"split {name!r} not found in {self.source}; valid splits: {valid}")
        return np.flatnonzero(self.columns[SPLIT_COLUMN] == name)

    def column(self, name: str) -> np.ndarray:
        if name not in self.columns:
            raise CfgenError(
                f"column {name!r} not found in {self.source}; available columns: {', '.join(self.columns)}"
            )
        return self.columns[name]

    def schema(
        self,
        label: str | None = None,
        attributes: Sequence[str] | None = None,
        kinds: dict[str, str] | None = None,
    ) -> Schema:
        """Resolve the label and attributes (card defaults apply) and infer each one's kind."""
        label = self.label_column(label)
        if attributes is None:
            attributes = self.card.get("attributes") or [c for c in self.attribute_candidates() if c != label]
        if label in attributes:
            raise CfgenError(f"{label!r} is the label and cannot also be an attribute")
        if not attributes:
            raise CfgenError(f"{self.source} has no attribute columns besides the label {label!r}")
        kinds = dict(kinds or {})
        for name in [label, *attributes]:
            self.column(name)
        unknown = set(kinds) - {label, *attributes}
        if unknown:
            raise CfgenError(
                f"kind given for {min(unknown)!r}, which is neither the label nor an attribute; "
                f"valid names: {', '.join([label, *attributes])}"
            )

        declared = self.card.get("vocabulary", {})

        def infer(name: str) -> Attribute:
            if name in declared and name not in kinds:
                return declared_attribute(name, self.columns[name], declared[name])
            return infer_attribute(name, self.columns[name], kinds.get(name))

        return Schema(infer(label), tuple(infer(a) for a in attributes))

    def label_column(self, label: str | None) -> str:
        """The label the user named, else the card's, with an error when there is neither."""
        label = label or self.card.get("label")
        if label is None:
            raise CfgenError(
                f"no label column given for {self.source}; name one with --label "
                f"(columns: {', '.join(self.attribute_candidates())})"
            )
        return label

    def attribute_candidates(self) -> list[str]:
        """Columns that can be a label or an attribute (not paths, splits or provenance)."""
        return [c for c in self.columns if c not in (FILE_COLUMN, SPLIT_COLUMN) and not c.startswith(PROVENANCE_PREFIX)]

    @classmethod
    def concat(cls, tables: Sequence["MetadataTable"]) -> "MetadataTable":
        """Join folders (for example a dataset and its counterfactuals) on their shared columns."""
        if len(tables) == 1:
            return tables[0]
        shared = [c for c in tables[0].columns if all(c in t.columns for t in tables[1:])]
        return cls(
            np.concatenate([t.image_paths for t in tables]),
            {c: np.concatenate([t.columns[c] for t in tables]) for c in shared},
            " + ".join(t.source for t in tables),
            tables[0].card,
        )


@contextmanager
def open_csv(path: Path) -> Iterator[TextIO]:
    """``path`` as UTF-8 text for the csv module, without the byte-order mark spreadsheet programs
    write; a file in another encoding is refused in one line."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            yield handle
    except UnicodeDecodeError:
        raw = path.read_bytes()
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as error:  # located in the whole file, not in the reader's buffer
            line = raw.count(b"\n", 0, error.start) + 1
            where = "the header" if line == 1 else f"data row {line - 1}"
            raise CfgenError(
                f"{path} is not UTF-8 text: {where} holds byte 0x{raw[error.start]:02x} (offset {error.start}); "
                "save it as UTF-8"
            ) from None
        raise


def read_imagefolder(root: str | Path) -> MetadataTable:
    """Read ``root/metadata.csv``; paths are checked when images are loaded, not here."""
    root = Path(root)
    if not root.is_dir():
        raise CfgenError(f"dataset folder {root} does not exist")
    path = root / METADATA_FILE
    if not path.is_file():
        raise CfgenError(f"{root} has no {METADATA_FILE}; a dataset folder needs one (see docs/datasets.md)")
    with open_csv(path) as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header:
            raise CfgenError(f"{path} is empty; it needs a header row with a {FILE_COLUMN!r} column")
        if FILE_COLUMN not in header:
            raise CfgenError(f"{path} has no {FILE_COLUMN!r} column; its columns are: {', '.join(header)}")
        if len(set(header)) != len(header):
            raise CfgenError(f"{path} has repeated column names: {', '.join(header)}")
        rows = list(reader)
    if not rows:
        raise CfgenError(f"{path} lists no images: the dataset is empty")
    short = next((i for i, row in enumerate(rows) if len(row) != len(header)), None)
    if short is not None:
        raise CfgenError(f"{path} data row {short + 1} has {len(rows[short])} fields, the header has {len(header)}")
    by_column = zip(*rows, strict=True)  # lengths were checked above
    columns = {name: np.array(values, dtype=str) for name, values in zip(header, by_column, strict=True)}
    del rows, by_column
    if SPLIT_COLUMN in columns:
        columns[SPLIT_COLUMN] = np.array([split_name(split) for split in columns[SPLIT_COLUMN]], dtype=str)
    prefix = f"{root.resolve()}/"
    paths = np.array([prefix + name for name in columns[FILE_COLUMN]], dtype=object)
    card_path = root / CARD_FILE
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    return MetadataTable(paths, columns, str(root), card)


def write_metadata(folder: Path, columns: dict[str, Sequence]) -> None:
    """Write ``metadata.csv`` with ``file_name`` first; values are written as strings."""
    if len(columns[FILE_COLUMN]) == 0:
        raise CfgenError(f"refusing to write an empty dataset to {folder}")
    names = [FILE_COLUMN, *[c for c in columns if c != FILE_COLUMN]]
    with (folder / METADATA_FILE).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        writer.writerows(zip(*(columns[c] for c in names), strict=True))


def write_card(folder: Path, card: dict) -> None:
    (folder / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
