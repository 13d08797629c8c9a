"""The dataset folder format, schema inference, adapters and every bad input named in the docs."""

import csv
from pathlib import Path

import numpy as np
import pytest
from conftest import write_folder
from PIL import Image

from cfgen.cli import main
from cfgen.data.adapters import open_dataset, open_datasets
from cfgen.data.images import check_images, load_image
from cfgen.data.schema import Attribute, Schema
from cfgen.data.table import read_imagefolder
from cfgen.errors import CfgenError
from cfgen.io import atomic_output_dir


def rewrite_metadata(folder: Path, edit) -> None:
    path = folder / "metadata.csv"
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    rows = edit(rows)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["file_name", "y"])
        writer.writeheader()
        writer.writerows(rows)


def test_read_folder_and_infer_kinds(small_folder: Path) -> None:
    table = read_imagefolder(small_folder)
    assert len(table) == 40 and table.splits == ("test", "train")
    schema = table.schema("y")
    assert [a.name for a in schema.attributes] == ["color", "shape", "size"]
    kinds = {v.name: v.kind for v in schema.variables}
    assert kinds == {"y": "categorical", "color": "binary", "shape": "categorical", "size": "continuous"}
    assert schema["color"].values == ("green", "red")
    assert len(table.split("train")) == 30
    assert table.training_split == "train"
    assert table.split("test").training_split == "all"  # no train split: every row
    overridden = table.schema("y", ["shape"], kinds={"y": "continuous"})
    assert overridden.label.kind == "continuous"


def test_numeric_vocabulary_is_in_numeric_order() -> None:
    attribute = Attribute("n", "categorical", ("2", "10", "1"))
    from cfgen.data.schema import infer_attribute

    inferred = infer_attribute("n", np.array(["10", "2", "1", "2"]))
    assert inferred.values == ("1", "2", "10")
    assert list(inferred.encode(np.array(["10", "1"]))) == [2, 0]
    assert attribute.code_of("10") == 1


def test_schema_round_trips_through_dict(small_folder: Path) -> None:
    schema = read_imagefolder(small_folder).schema("y")
    assert Schema.from_dict(schema.to_dict()) == schema


def latin_1_metadata(folder: Path) -> None:
    """metadata.csv as a spreadsheet saved in latin-1 writes it: the colour "red" spelled "rougé"."""
    metadata = folder / "metadata.csv"
    metadata.write_bytes(metadata.read_bytes().replace(b"red", "roug\xe9".encode("latin-1")))


def measure_exit(folder: Path, tmp_path: Path, *extra: str) -> int:
    out = str(tmp_path / "report")
    return main(["measure", str(folder), "--label", "y", "--out", out, "--bootstrap", "20", *extra])


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda f: (f / "metadata.csv").unlink(), "has no metadata.csv"),
        (
            lambda f: rewrite_metadata(f, lambda rows: [{"path": r["file_name"], "y": r["y"]} for r in rows]),
            "no 'file_name' column",
        ),
        (lambda f: rewrite_metadata(f, lambda rows: []), "empty"),
        (lambda f: (f / "images" / "3.png").unlink(), "missing"),
        (lambda f: (f / "images" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really"), "cannot be read"),
        (
            lambda f: rewrite_metadata(
                f, lambda rows: [{**r, "color": "" if i == 4 else r["color"]} for i, r in enumerate(rows)]
            ),
            "missing values",
        ),
        (
            lambda f: rewrite_metadata(
                f, lambda rows: [{**r, "shape": "NaN" if i == 7 else r["shape"]} for i, r in enumerate(rows)]
            ),
            "missing values",
        ),
        (lambda f: rewrite_metadata(f, lambda rows: [{**r, "color": "red"} for r in rows]), "single value"),
        (lambda f: latin_1_metadata(f), "is not UTF-8 text: data row 1 holds byte 0xe9"),
    ],
    ids=[
        "no-metadata",
        "no-file-name",
        "empty",
        "missing-image",
        "corrupt-image",
        "empty-value",
        "nan-value",
        "single-value",
        "latin-1",
    ],
)
def test_bad_folders_fail_with_one_line_and_write_nothing(small_folder, tmp_path, capsys, break_it, message) -> None:
    break_it(small_folder)
    assert measure_exit(small_folder, tmp_path) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error and error.count("\n") == 1
    assert not (tmp_path / "report").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--label", "nope"], "column 'nope' not found"),
        (["--attributes", "color,nope"], "column 'nope' not found"),
        (["--kinds", "color=ordinal"], "valid kinds: binary, categorical, continuous"),
        (["--kinds", "shape=binary"], "cannot be binary"),
        (["--kinds", "color=continuous"], "not numeric"),
        (["--split", "holdout"], "valid splits: test, train, all"),
    ],
)
def test_bad_columns_and_options(small_folder, tmp_path, capsys, args, message) -> None:
    assert measure_exit(small_folder, tmp_path, *args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


def test_existing_output_is_refused_unless_overwrite(small_folder, tmp_path, capsys) -> None:
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "keep.txt").write_text("mine")
    assert measure_exit(small_folder, tmp_path) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "report" / "keep.txt").read_text() == "mine"
    assert measure_exit(small_folder, tmp_path, "--overwrite") == 0
    assert (tmp_path / "report" / "confounding.json").is_file()
    assert not (tmp_path / "report" / "keep.txt").exists()


def test_interrupted_output_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), atomic_output_dir(tmp_path / "out") as staging:
        (staging / "half.txt").write_text("half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_mixed_sizes_and_modes_need_resize(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "mixed", [{"y": str(i % 2)} for i in range(4)])
    Image.new("L", (10, 12)).save(folder / "images" / "2.png")
    table = read_imagefolder(folder)
    with pytest.raises(CfgenError, match=r"differ in size or mode: 8x8 RGB \(3 images.*10x12 L.*--resize"):
        check_images(table)
    image_format = check_images(table, resize=16)
    assert image_format.size == (16, 16) and image_format.channels == 3
    assert load_image(table.image_paths[2], image_format).shape == (16, 16, 3)
    assert check_images(table.select(np.arange(4) != 2)).size == (8, 8)


def test_joined_folders_keep_shared_columns(small_folder: Path, tmp_path: Path) -> None:
    other = write_folder(tmp_path / "other", [{"y": "1", "color": "red", "extra": "x"}] * 3)
    joined = open_datasets([small_folder, other])
    assert len(joined) == 43 and set(joined.columns) == {"file_name", "y", "color"}


def write_celeba(root: Path, nested: bool) -> Path:
    base = root / "celeba" if nested else root
    (base / "img_align_celeba").mkdir(parents=True)
    names = ["Blond_Hair", "Male", "Smiling"]
    values = [(1, -1, 1), (-1, 1, 1), (-1, -1, -1), (1, 1, -1), (-1, 1, 1), (1, -1, -1)]
    lines = [str(len(values)), " ".join(names)]
    for i, row in enumerate(values, start=1):
        Image.new("RGB", (12, 10), (i * 30, 0, 0)).save(base / "img_align_celeba" / f"{i:06d}.jpg")
        lines.append(f"{i:06d}.jpg " + " ".join(f"{v:2d}" for v in row))
    (base / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (base / "list_eval_partition.txt").write_text("".join(f"{i:06d}.jpg {min(i // 3, 2)}\n" for i in range(1, 7)))
    return root


@pytest.mark.parametrize("nested", [False, True])
def test_celeba_layout(tmp_path: Path, nested: bool) -> None:
    table = open_dataset(write_celeba(tmp_path / "celeba_root", nested))
    assert list(table.columns["Blond_Hair"]) == ["1", "0", "0", "1", "0", "1"]
    assert list(table.columns["split"]) == ["train", "train", "validation", "validation", "validation", "test"]
    schema = table.schema("Blond_Hair")
    assert [a.name for a in schema.attributes] == ["Male", "Smiling"] and schema.label.kind == "binary"
    assert check_images(table).size == (12, 10)


def test_waterbirds_layout(tmp_path: Path) -> None:
    root = tmp_path / "waterbird_complete95_forest2water2"
    (root / "001.Black_footed_Albatross").mkdir(parents=True)
    rows = []
    for i, (y, place, split) in enumerate([(1, 1, 0), (1, 0, 0), (0, 0, 1), (0, 1, 2), (1, 1, 2)]):
        name = f"001.Black_footed_Albatross/img_{i}.jpg"
        Image.new("RGB", (9, 9)).save(root / name)
        rows.append(
            {"img_id": i, "img_filename": name, "y": y, "split": split, "place": place, "place_filename": "/x/y.jpg"}
        )
    with (root / "metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    table = open_dataset(root)
    schema = table.schema()
    assert schema.label.name == "y" and [a.name for a in schema.attributes] == ["place"]
    assert list(table.columns["split"]) == ["train", "train", "validation", "test", "test"]
    assert len(table.split("test")) == 2 and check_images(table).mode == "RGB"


def test_unknown_layout_and_format(tmp_path: Path) -> None:
    (tmp_path / "nothing").mkdir()
    with pytest.raises(CfgenError, match=r"has no metadata\.csv"):
        open_dataset(tmp_path / "nothing")
    with pytest.raises(CfgenError, match="valid formats: auto, imagefolder, celeba, waterbirds"):
        open_dataset(tmp_path / "nothing", "coco")
    with pytest.raises(CfgenError, match="does not exist"):
        open_dataset(tmp_path / "absent")


def test_a_byte_order_mark_is_read_as_spreadsheet_programs_write_it(small_folder: Path) -> None:
    metadata = small_folder / "metadata.csv"
    plain = read_imagefolder(small_folder)
    metadata.write_bytes(b"\xef\xbb\xbf" + metadata.read_bytes())
    marked = read_imagefolder(small_folder)
    assert list(marked.columns) == list(plain.columns) and np.array_equal(marked.image_paths, plain.image_paths)
