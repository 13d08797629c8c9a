"""Folders cfgen writes are Hugging Face datasets with their splits, and Hugging Face layouts read back."""

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from cfgen.cli import main
from cfgen.counterfactuals.generation import generate_counterfactuals
from cfgen.data.adapters import open_dataset
from cfgen.data.table import read_imagefolder
from cfgen.datasets.colored_mnist.rendering import ColoredMNISTConfig, make_colored_mnist

SIZES = {"train": 12, "validation": 4, "test": 6, "test_anti": 4}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_colored_mnist(ColoredMNISTConfig(sizes=SIZES), tmp_path_factory.mktemp("hf") / "data")


def load(folder: Path, cache: Path) -> datasets.DatasetDict:
    return datasets.load_dataset(str(folder), cache_dir=str(cache))


def test_every_folder_cfgen_writes_loads_as_its_splits(data: Path, tmp_path: Path) -> None:
    exact = generate_counterfactuals(data, "fg_color=random", tmp_path / "exact", generator="exact", split="train")
    anti = generate_counterfactuals(data, "bg_color=*", tmp_path / "anti", generator="exact", split="test_anti")
    for folder, splits in [(data, SIZES), (exact, {"train": 12}), (anti, {"test_anti": 12})]:
        loaded = load(folder, tmp_path / "cache")
        assert {name: part.num_rows for name, part in loaded.items()} == splits
        table = read_imagefolder(folder)
        features = loaded[next(iter(splits))].features
        for name in ("digit", "fg_color", "bg_color", "thickness"):
            assert isinstance(features[name], datasets.ClassLabel)
            assert set(features[name].names) == set(table.column(name))
        # the same images and values as cfgen's own table, row by row
        for split, part in loaded.items():
            rows = np.flatnonzero(table.column("split") == split)
            first = part[0]
            assert np.array_equal(np.asarray(first["image"]), np.asarray(Image.open(table.image_paths[rows[0]])))
            assert features["fg_color"].int2str(first["fg_color"]) == table.column("fg_color")[rows[0]]
    provenance = load(exact, tmp_path / "cache")["train"].features["cf_counterfactual"]
    assert provenance == datasets.Value("string")


def test_hugging_face_layouts_read_back(data: Path, tmp_path: Path) -> None:
    # per-split folders with metadata.jsonl and no cfgen table, as `datasets` writes and the Hub holds
    hub = tmp_path / "hub"
    table = read_imagefolder(data)
    for split in ("train", "test"):
        (hub / split).mkdir(parents=True)
        rows = np.flatnonzero(table.column("split") == split)
        with (hub / split / "metadata.jsonl").open("w") as handle:
            for row in rows:
                name = f"{row:04d}.png"
                Image.open(table.image_paths[row]).save(hub / split / name)
                values = {column: table.column(column)[row] for column in ("digit", "fg_color", "bg_color")}
                handle.write(json.dumps({"file_name": name, **values, "digit": int(values["digit"])}) + "\n")
    opened = open_dataset(hub)
    assert opened.splits == ("test", "train") and len(opened) == 18
    assert set(opened.column("digit")) <= {str(d) for d in range(10)}
    assert Image.open(opened.image_paths[0]).size == (28, 28)
    assert main(["measure", "--data", str(hub), "--label", "digit", "--attributes", "fg_color,bg_color",
                 "--out", str(tmp_path / "report"), "--bootstrap", "20"]) == 0  # fmt: skip
    # folders of the old split name still read, under the new one
    old = tmp_path / "old"
    old.mkdir()
    (old / "metadata.csv").write_text("file_name,split,digit\na.png,test-anti,1\nb.png,train,2\n")
    assert read_imagefolder(old).splits == ("test_anti", "train")
