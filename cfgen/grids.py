"""Labelled image grids: training previews and the example grids of counterfactual folders."""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT_SIZE = 11
MARGIN = 4  # pixels between cells
MIN_TILE = 112  # small images are drawn at least this large (at least 4x at 28 px), without smoothing


def labelled_grid(cells: list[list[tuple[np.ndarray, str] | None]], row_labels: list[str]) -> np.ndarray:
    """An RGB picture of rows of (uint8 image, caption) cells, each row labelled on the left; small images
    are scaled up by a whole factor, without smoothing, so that a person can see what an edit did."""
    font = ImageFont.load_default(FONT_SIZE)
    first = next(cell for row in cells for cell in row if cell is not None)[0]
    scale = max(1, -(-MIN_TILE // max(first.shape[:2])))
    tile_height, tile_width = first.shape[0] * scale, first.shape[1] * scale
    captions = [cell[1] for row in cells for cell in row if cell is not None]
    caption_height = (FONT_SIZE + 2) * max(caption.count("\n") + 1 for caption in captions)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = max(int(measure.textlength(label, font=font)) for label in row_labels) + 2 * MARGIN
    column_width = max(
        tile_width, *(int(measure.textlength(line, font=font)) for c in captions for line in c.split("\n"))
    )
    row_height = tile_height + caption_height + MARGIN
    columns = max(len(row) for row in cells)
    size = (label_width + columns * (column_width + MARGIN), MARGIN + len(cells) * row_height)
    canvas = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(canvas)
    for r, (row, label) in enumerate(zip(cells, row_labels, strict=True)):
        top = MARGIN + r * row_height
        draw.text((MARGIN, top + tile_height // 2), label, fill="black", font=font, anchor="lm")
        for c, cell in enumerate(row):
            if cell is None:
                continue
            image, caption = cell
            left = label_width + c * (column_width + MARGIN)
            tile = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).convert("RGB")
            canvas.paste(tile.resize((tile_width, tile_height), Image.Resampling.NEAREST), (left, top))
            draw.multiline_text((left, top + tile_height + 1), caption, fill="black", font=font, spacing=2)
    return np.asarray(canvas)


def save_grid(grid: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
