"""Miniature copies of the Waterbirds (images of mixed sizes, as there) and CelebA layouts through every
stage of ``cfgen pipeline`` (tiny preset): the meter, the generator, inference tuning on their
validation split, generation, the judges that score the edits, the re-measure and the classifiers
all open them as they are, and the counterfactual folder names its source by the digest of its table."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cfgen.data.adapters import open_dataset
from cfgen.data.counterfactuals import made_from
from cfgen.data.table import read_imagefolder
from cfgen.pipeline import run_pipeline

pytestmark = pytest.mark.trains

SIZE = 16
BACKGROUNDS = {"0": (40, 120, 40), "1": (40, 60, 160)}  # land, water


def picture(rng: np.random.Generator, shape: str, background: tuple[int, int, int]) -> Image.Image:
    """A square or a bar in light grey on a flat background, shifted by a pixel or two."""
    pixels = np.empty((SIZE, SIZE, 3), dtype=np.uint8)
    pixels[:] = background
    dy, dx = rng.integers(-2, 3, size=2)
    rows, columns = (slice(5 + dy, 11 + dy), slice(5 + dx, 11 + dx)) if shape == "1" else (slice(3, 13), slice(7, 9))
    pixels[rows, columns] = 220
    return Image.fromarray(pixels)


def confounded_rows(count: int, rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """(label, attribute, split): the attribute follows the label on 90% of training rows, on half elsewhere."""
    rows = []
    for i in range(count):
        split = "0" if i < 48 else "1" if i < 64 else "2"
        label = str(i % 2)
        follows = rng.random() < (0.9 if split == "0" else 0.5)
        rows.append((label, label if follows else str(1 - int(label)), split))
    return rows


def write_waterbirds(root: Path) -> Path:
    rng = np.random.default_rng(0)
    (root / "001.Albatross").mkdir(parents=True)
    entries = []
    for i, (y, place, split) in enumerate(confounded_rows(80, rng)):
        name = f"001.Albatross/img_{i}.jpg"
        image = picture(rng, y, BACKGROUNDS[place])
        (image.resize((SIZE + 4, SIZE)) if i % 5 == 0 else image).save(root / name, quality=95)  # sizes differ
        entries.append({"img_id": i, "img_filename": name, "y": y, "split": split, "place": place})
    with (root / "metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(entries[0]))
        writer.writeheader()
        writer.writerows(entries)
    return root


def write_celeba(root: Path) -> Path:
    rng = np.random.default_rng(1)
    (root / "img_align_celeba").mkdir(parents=True)
    lines, partition = [], []
    for i, (smiling, male, split) in enumerate(confounded_rows(80, rng), start=1):
        name = f"{i:06d}.jpg"
        picture(rng, smiling, BACKGROUNDS[male]).save(root / "img_align_celeba" / name, quality=95)
        lines.append(f"{name} {int(rng.random() < 0.5) * 2 - 1:2d} {int(male) * 2 - 1:2d} {int(smiling) * 2 - 1:2d}")
        partition.append(f"{name} {split}")
    (root / "list_attr_celeba.txt").write_text("\n".join([str(len(lines)), "Blond_Hair Male Smiling", *lines]) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(partition) + "\n")
    return root


LAYOUTS = {
    "waterbirds": (write_waterbirds, {"resize": SIZE}, "place"),
    "celeba": (write_celeba, {"label": "Smiling", "attributes": ["Male"]}, "Male"),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_stage_opens_the_layout(layout: str, tmp_path: Path) -> None:
    write, columns, attribute = LAYOUTS[layout]
    data = write(tmp_path / layout)
    run = run_pipeline(tmp_path / "run", data=data, preset="tiny", **columns)

    metrics = json.loads((run / "metrics.json").read_text())
    quality = metrics["counterfactual_quality"]  # read by judges trained on the layout; nothing exact to compare
    assert quality["exact"] is None and "mse_to_exact" not in quality["all"]
    assert set(quality["judge_accuracy_on_sources"]) == {columns.get("label", "y"), attribute}
    assert 0.0 <= quality["all"]["effectiveness"][attribute] <= 1.0 and quality["soundness_images"] == 4
    assert set(metrics["inference"]) == {attribute}  # chosen on the layout's validation split
    assert metrics["attribute_scores"]["before"][attribute]["score"] > 0.5  # the label shows through the attribute
    for method in ("erm", "cf-reg"):
        accuracy = metrics["classifiers"][method]["test"]["accuracy"]
        assert 0.0 <= accuracy["mean"] <= 1.0

    cf = read_imagefolder(run / "counterfactuals")
    source = open_dataset(data)
    assert made_from(cf.card, source) and cf.card["attributes"] == [attribute]
    assert set(cf.column("cf_intervened")) == {attribute} and len(cf) == 16  # the tiny preset edits 16 images
    assert (cf.column(attribute) != source.column(attribute)[cf.column("cf_source_row").astype(int)]).all()
    changed = source.select(np.arange(len(source)) != 0)
    assert not made_from(cf.card, changed)  # another table is another source
    report = (run / "report.md").read_text()
    assert "read by judges trained on the data" in report and "MSE to exact" not in report
    assert "![examples](examples.png)" in report and Image.open(run / "examples.png").size[0] >= 8 * SIZE
