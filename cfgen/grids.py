"""Labelled image grids: training previews and the example grids of counterfactual folders."""

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image


def labelled_grid(cells: list[list[tuple[np.ndarray, str] | None]], row_labels: list[str]) -> np.ndarray:
    """An RGB picture of rows of (image, caption) cells, each row labelled on the left; small images are
    drawn at least 4x larger, without smoothing, so that a person can see what an edit did."""
    first = next(cell for row in cells for cell in row if cell is not None)[0]
    lines = max(cell[1].count("\n") + 1 for row in cells for cell in row if cell is not None)
    tile = max(first.shape[1], min(4 * first.shape[1], 256)) / 100  # inches at 100 dpi
    columns = max(len(row) for row in cells)
    figure = Figure(figsize=(max(tile, 1.2) * columns, (tile + 0.15 * lines + 0.2) * len(cells)), dpi=100)
    axes = figure.subplots(len(cells), columns, squeeze=False)
    for axes_row, row, label in zip(axes, cells, row_labels, strict=True):
        for axis, cell in zip(axes_row, [*row, *[None] * (columns - len(row))], strict=True):
            axis.set_xticks([])
            axis.set_yticks([])
            if cell is None:
                axis.set_axis_off()
                continue
            image, caption = cell
            axis.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=255,
                        interpolation="nearest")  # fmt: skip
            axis.set_xlabel(caption, fontsize=7)
        axes_row[0].set_axis_on()
        axes_row[0].set_ylabel(label, fontsize=8)
    figure.tight_layout()
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_grid(grid: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
