"""What evaluation may know about the colored digits because it drew them: colours read off the
pixels, the strokes whatever their colours, the digits no evaluation image uses, and the exact
counterfactual of any edit. The generator never uses any of it."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cfgen.data.table import SPLIT_COLUMN, MetadataTable
from cfgen.datasets.colored_mnist.rendering import (
    BG_COLORS,
    FACTORS,
    FG_COLORS,
    LABEL,
    RENDERER_VERSION,
    SOURCE_COLUMN,
    load_digits,
    open_builtin,
    render,
)
from cfgen.interventions import Request

BORDER = 2  # pixels of the frame read as background: the digits never reach it
MIN_STROKE_CONTRAST = 32.0  # RGB distance below which an image is taken to hold no stroke at all


def border_colour(images: np.ndarray) -> np.ndarray:
    """(N, 3) median colour of each image's frame, where the built-in digits never reach."""
    frame = np.ones(images.shape[1:3], dtype=bool)
    frame[BORDER:-BORDER, BORDER:-BORDER] = False
    return np.median(images[:, frame, :].astype(np.float64), axis=1)


def nearest_colour(colours: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> np.ndarray:
    names = list(palette)
    entries = np.array([palette[name] for name in names], dtype=np.float64)
    distance = ((colours[:, None, :] - entries[None]) ** 2).sum(-1)
    return np.array(names, dtype=object)[distance.argmin(1)]


def foreground_colour(images: np.ndarray, background: np.ndarray) -> np.ndarray:
    """The palette colour c that best explains every pixel p as bg + alpha (c - bg), alpha in [0, 1]."""
    names = list(FG_COLORS)
    pixels = images.reshape(len(images), -1, 3).astype(np.float64) - background[:, None, :]
    residuals = []
    for name in names:
        direction = np.asarray(FG_COLORS[name], dtype=np.float64)[None, :] - background  # (N, 3)
        span = np.maximum((direction**2).sum(-1), 1e-6)[:, None]
        alpha = np.clip((pixels * direction[:, None, :]).sum(-1) / span, 0, 1)
        residuals.append(((pixels - alpha[..., None] * direction[:, None, :]) ** 2).sum((1, 2)))
    return np.array(names, dtype=object)[np.argmin(residuals, axis=0)]


def _stroke_distance(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's RGB distance from its image's frame colour (N, H, W), and each image's stroke
    contrast (N,): its 98th percentile distance, at least ``MIN_STROKE_CONTRAST``."""
    offset = images.astype(np.float64) - border_colour(images)[:, None, None, :]
    distance = np.sqrt((offset**2).sum(-1))
    contrast = np.maximum(np.percentile(distance.reshape(len(images), -1), 98, axis=1), MIN_STROKE_CONTRAST)
    return distance, contrast


def stroke_map(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 1): the built-in digits' strokes without their colours (distance from the frame
    colour over the stroke contrast), which is what the learned built-in judges read."""
    distance, contrast = _stroke_distance(images)
    return (np.clip(distance / contrast[:, None, None], 0, 1) * 255).round().astype(np.uint8)[..., None]


def stroke_masks(images: np.ndarray) -> np.ndarray:
    """(N, H, W) bool: the pixels of uint8 (N, H, W, 3) images farther from their frame's colour than
    half the image's stroke contrast: the shape whatever its colours."""
    return _half_contrast(*_stroke_distance(images))


def _half_contrast(distance: np.ndarray, contrast: np.ndarray) -> np.ndarray:
    return distance > contrast[:, None, None] / 2


def stroke_width(masks: np.ndarray) -> np.ndarray:
    """Mean stroke width in pixels of each (H, W) mask: 2 x area / perimeter (pixel edges between stroke
    and background), which tends to the width of a long stroke."""
    padded = np.pad(masks, ((0, 0), (1, 1), (1, 1)))
    edges = (padded[:, 1:, :] != padded[:, :-1, :]).sum((1, 2)) + (padded[:, :, 1:] != padded[:, :, :-1]).sum((1, 2))
    return 2 * masks.sum((1, 2)) / np.maximum(edges, 1)


def stroke_fidelity(generated: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Per image: IoU of the stroke masks of ``generated`` and ``truth`` (uint8 RGB), their stroke-width
    difference in pixels, unsigned (how far) and signed (whether edits thin or thicken the strokes, which
    the unsigned mean hides), and the stroke strength: ``generated``'s summed distance from its frame
    colour over ``truth``'s stroke, as a share of ``truth``'s. Masks and widths take each image's own
    contrast, so a stroke faded evenly toward the background keeps them; the strength falls for it, and
    for a narrower stroke or a colour nearer the background than the true one (1 where ``truth`` has no
    stroke)."""
    (edit_distance, edit_contrast), (exact_distance, exact_contrast) = map(_stroke_distance, (generated, truth))
    edit, exact = _half_contrast(edit_distance, edit_contrast), _half_contrast(exact_distance, exact_contrast)
    union = (edit | exact).sum((1, 2))
    iou = np.where(union > 0, (edit & exact).sum((1, 2)) / np.maximum(union, 1), 1.0)
    change = stroke_width(edit) - stroke_width(exact)
    exact_strength = (exact_distance * exact).sum((1, 2))
    strength = np.where(exact_strength > 0, (edit_distance * exact).sum((1, 2)) / np.maximum(exact_strength, 1e-9), 1.0)
    return {
        "stroke_iou": iou,
        "stroke_width_error": np.abs(change),
        "stroke_width_change": change,
        "stroke_strength": strength,
    }


def read_colours(images: np.ndarray, names: Sequence[str], batch_size: int = 512) -> dict[str, np.ndarray]:
    """The palette names of ``names`` (of fg_color, bg_color) in uint8 (N, H, W, 3) images: the background
    from the frame, the foreground as the palette colour that best explains the strokes."""
    read: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(0, len(images), batch_size):
        part = images[start : start + batch_size]
        background = border_colour(part)
        if "bg_color" in read:
            read["bg_color"].append(nearest_colour(background, BG_COLORS))
        if "fg_color" in read:
            read["fg_color"].append(foreground_colour(part, background))
    return {name: np.concatenate(parts) if parts else np.array([], dtype=object) for name, parts in read.items()}


def held_out_digits(table: MetadataTable) -> np.ndarray:
    """The MNIST digits of validation and test rows (of every row, when there are no splits)."""
    if SPLIT_COLUMN not in table.columns:
        return np.unique(table.column(SOURCE_COLUMN).astype(np.int64))
    rows = table.column(SPLIT_COLUMN) != "train"
    return np.unique(table.column(SOURCE_COLUMN)[rows].astype(np.int64))


def rendered_judge_data(
    held_out: np.ndarray, variables: list, count: int, image_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Digits no validation or test row uses, re-rendered with every factor drawn independently."""
    digits, labels = load_digits()
    pool = np.setdiff1d(np.arange(len(digits)), held_out)
    rng = np.random.default_rng([seed, 7])
    chosen = np.resize(rng.permutation(pool), count)  # past the pool, digits return with new factors
    attributes = [factor for factor in FACTORS if factor.apply is not None]
    images, columns = [], {v.name: [] for v in variables}
    for index in chosen:
        factors = {factor.name: factor.values[rng.integers(len(factor.values))] for factor in attributes}
        images.append(render(digits, int(index), factors, image_size))
        factors[LABEL] = str(labels[index])
        for v in variables:
            columns[v.name].append(factors[v.name])
    codes = np.stack([v.encode(np.array(columns[v.name])) for v in variables], axis=1)
    return np.stack(images), codes


class ExactSource:
    """The built-in datasets' renderer: each source digit re-drawn with the edited factors."""

    name = "exact"  # the cf_generator column of what it draws

    def __init__(self, data: Path, table: MetadataTable):
        _, self.digits, self.image_size = open_builtin(data)  # refuses other folders
        self.schema = table.schema()
        self.sources = table.column(SOURCE_COLUMN)
        self.factors = {factor.name: table.column(factor.name) for factor in FACTORS}

    def settings(self) -> dict[str, Any]:
        return {"generator": self.name, "renderer_version": RENDERER_VERSION}

    def make(self, table: MetadataTable, requests: Sequence[Request]) -> np.ndarray:
        images = []
        for request in requests:
            factors = {name: str(column[request.row]) for name, column in self.factors.items()}
            factors.update(request.target)
            images.append(render(self.digits, int(self.sources[request.row]), factors, self.image_size))
        return np.stack(images)
