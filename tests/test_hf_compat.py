"""Folders cfgen writes open with Hugging Face ``datasets.load_dataset("imagefolder")``."""

from pathlib import Path

import datasets

from cfgen.data.colored_mnist import ColoredMNISTConfig, make_colored_mnist
from cfgen.generator.generation import generate_counterfactuals

SIZES = {"train": 12, "validation": 4, "test": 6, "test-anti": 4}


def test_builtin_and_counterfactual_folders_load_as_imagefolder(tmp_path: Path) -> None:
    data = make_colored_mnist(ColoredMNISTConfig(sizes=SIZES), tmp_path / "data")
    cf_folder = tmp_path / "cf"
    counterfactuals = generate_counterfactuals(data, "fg_color=random", cf_folder, generator="exact", split="train")
    for folder, rows, extra in [(data, 26, "source_index"), (counterfactuals, 12, "cf_counterfactual")]:
        loaded = datasets.load_dataset("imagefolder", data_dir=str(folder), cache_dir=str(tmp_path / "hf"))
        assert list(loaded) == ["train"]  # one table; cfgen's own split column travels as a feature
        table = loaded["train"]
        assert table.num_rows == rows
        assert {"image", "split", "digit", "fg_color", "bg_color", "thickness", extra} <= set(table.column_names)
        assert table[0]["image"].size == (28, 28)
    assert set(loaded["train"]["split"]) == {"train"}
