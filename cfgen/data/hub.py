"""Dataset folders that are Hugging Face datasets too: ``datasets.load_dataset(folder)`` gives their splits.

cfgen reads and writes one ``metadata.csv`` with a ``split`` column. ``datasets`` wants one
metadata file per split, beside that split's images, and a card that names the splits; so every
folder cfgen writes is laid out as

    metadata.csv                       every row (cfgen's table)
    images/<split>/...                 the images of one split
    images/<split>/metadata.jsonl      the same rows for ``datasets`` (paths relative to it)
    README.md                          a dataset card: ``configs`` maps each split to its folder and
                                       types the label and discrete attributes as ``ClassLabel``

Split names become legal ``datasets`` split names (``\\w+``: ``test-anti`` -> ``test_anti``).
"""

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cfgen.data.schema import infer_attribute
from cfgen.data.table import FILE_COLUMN, METADATA_FILE, SPLIT_COLUMN, TRAIN_SPLIT, split_name, write_metadata
from cfgen.errors import CfgenError

HUB_METADATA = "metadata.jsonl"
HUB_CARD = "README.md"
IMAGES = "images"


def write_dataset(folder: Path, columns: dict[str, Sequence], string_columns: Sequence[str] = ()) -> None:
    """Write a dataset folder's tables for ``columns`` (one list per column, ``file_name`` paths relative
    to ``folder``): each image moved into its split's folder, ``metadata.csv``, each split's
    ``metadata.jsonl`` and the card. ``string_columns`` are typed as text, not as classes or numbers."""
    columns = {name: [str(value) for value in values] for name, values in columns.items()}
    splits = columns.get(SPLIT_COLUMN, [TRAIN_SPLIT] * len(columns[FILE_COLUMN]))
    moved = []
    for file_name, split in zip(columns[FILE_COLUMN], splits, strict=True):
        target = f"{IMAGES}/{split_name(split)}/{Path(file_name).name}"
        if file_name != target:
            (folder / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(folder / file_name, folder / target)
        moved.append(target)
    columns[FILE_COLUMN] = moved
    write_metadata(folder, columns)

    features = [{"name": "image", "dtype": "image"}]
    typed = {}
    for name, values in columns.items():
        if name in (FILE_COLUMN, SPLIT_COLUMN):
            continue
        variable = None if name in string_columns else _variable(name, values)
        if variable is None:
            features.append({"name": name, "dtype": "string"})
        elif variable.is_discrete:
            names = {str(code): value for code, value in enumerate(variable.values)}
            features.append({"name": name, "dtype": {"class_label": {"names": names}}})
        else:
            features.append({"name": name, "dtype": "float64"})
            typed[name] = float
    order = [name for name in columns if name not in (FILE_COLUMN, SPLIT_COLUMN)]
    for split in dict.fromkeys(split_name(s) for s in splits):
        rows = [i for i, s in enumerate(splits) if split_name(s) == split]
        with (folder / IMAGES / split / HUB_METADATA).open("w", encoding="utf-8") as handle:
            for i in rows:
                record = {FILE_COLUMN: Path(columns[FILE_COLUMN][i]).name}
                record.update({name: typed.get(name, str)(columns[name][i]) for name in order})
                handle.write(json.dumps(record) + "\n")
    card = {
        "configs": [
            {
                "config_name": "default",
                "data_files": [
                    {"split": split, "path": f"{IMAGES}/{split}/**"} for split in dict.fromkeys(map(split_name, splits))
                ],
                "features": features,
            }
        ]
    }
    (folder / HUB_CARD).write_text(
        "---\n" + json.dumps(card, indent=1) + "\n---\n\n"
        f"A dataset folder written by cfgen: `{METADATA_FILE}` is cfgen's table of every row; "
        "`datasets.load_dataset(<this folder>)` reads the same rows as one split per folder of `images/`.\n"
    )


def _variable(name: str, values: list[str]):
    """The column's kind and vocabulary as cfgen infers them; None (text) for a column that is neither."""
    try:
        return infer_attribute(name, np.array(values, dtype=str))
    except CfgenError:
        return None
