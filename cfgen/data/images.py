"""Checking and loading the images a metadata table lists.

Every image must exist, decode, and share one size and mode, unless the user asks for a resize
(then every image is resized to a square and converted to RGB). Checking happens up front so a
long training run never dies on image 90,000.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from cfgen.data.table import MetadataTable
from cfgen.errors import CfgenError


@dataclass(frozen=True)
class ImageFormat:
    """The size (width, height) and PIL mode every image is delivered in."""

    size: tuple[int, int]
    mode: str

    @property
    def channels(self) -> int:
        return len(Image.new(self.mode, (1, 1)).getbands())

    def check(self, images: Sequence[Image.Image], reader: str) -> None:
        """Refuse PIL images of another size or mode than ``reader`` (a model) works on, in one line."""
        found = {(image.size, image.mode) for image in images} - {(self.size, self.mode)}
        if found:
            (width, height), mode = next(iter(found))
            raise CfgenError(
                f"images are {width}x{height} {mode}; {reader} works on {self.size[0]}x{self.size[1]} {self.mode} "
                "images: convert them first"
            )


def open_image(path: str | Path) -> Image.Image:
    """Decode one image fully, with a one-line error if it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise CfgenError(f"image listed in the metadata is missing: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise CfgenError(f"image {path} cannot be read ({type(error).__name__}: {error})") from None


def scan_images(table: MetadataTable) -> dict[tuple[tuple[int, int], str], list[str]]:
    """Decode every image once; returns the paths found for each (size, mode)."""
    if len(table) == 0:
        raise CfgenError(f"{table.source} lists no images: the dataset is empty")
    formats: dict[tuple[tuple[int, int], str], list[str]] = {}
    for path in table.image_paths:
        image = open_image(path)
        formats.setdefault((image.size, image.mode), []).append(path)
    return formats


def check_images(table: MetadataTable, resize: int | None = None) -> ImageFormat:
    """Check every image and return the one format they will be delivered in."""
    formats = scan_images(table)
    if resize is not None:
        if resize < 8:
            raise CfgenError(f"--resize {resize} is too small; give a side length of at least 8 pixels")
        return ImageFormat((resize, resize), "RGB")
    if len(formats) > 1:
        ranked = sorted(formats.items(), key=lambda item: -len(item[1]))
        found = "; ".join(
            f"{w}x{h} {mode} ({len(paths)} images, e.g. {Path(paths[0]).name})" for ((w, h), mode), paths in ranked
        )
        raise CfgenError(f"images differ in size or mode: {found}; pass --resize N to resize all to NxN RGB")
    ((size, mode),) = formats
    return ImageFormat(size, mode)


def load_image(path: str | Path, image_format: ImageFormat) -> np.ndarray:
    """One image as a (H, W, C) uint8 array in the checked format."""
    image = open_image(path)
    if image.mode != image_format.mode:
        image = image.convert(image_format.mode)
    if image.size != image_format.size:
        image = image.resize(image_format.size, Image.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def load_images(paths: np.ndarray, image_format: ImageFormat, progress: bool = False) -> np.ndarray:
    """Images as one (N, H, W, C) uint8 array: small datasets train fastest from memory."""
    width, height = image_format.size
    images = np.empty((len(paths), height, width, image_format.channels), dtype=np.uint8)
    for i, path in enumerate(tqdm(paths, desc="loading images", disable=not progress)):
        images[i] = load_image(path, image_format)
    return images
