"""The built-in colored digits: MNIST shapes drawn by a known mechanism, and what that knowledge
lets evaluation do (``ColoredMNIST``, a ``cfgen.datasets.BuiltinDataset``)."""

import hashlib
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from cfgen.data.schema import Attribute
from cfgen.data.table import MetadataTable, read_imagefolder
from cfgen.datasets.colored_mnist.readers import (
    ExactSource,
    held_out_digits,
    read_colours,
    rendered_judge_data,
    stroke_fidelity,
    stroke_map,
)
from cfgen.datasets.colored_mnist.rendering import (
    ATTRIBUTES,
    BUILTIN_NAME,
    DEFAULT_SIZES,
    DIGITS_SHA256,
    FACTORS,
    LABEL,
    ColoredMNISTConfig,
    make_colored_mnist,
    refuse_label_edit,
    render,
    render_counterfactual,
)


class ColoredMNIST:
    """The colored digits' capabilities: for evaluation (pixel readers, judges' training images, exact
    counterfactuals, shape fidelity), the oracle's unconfounded data and the pipeline's default data."""

    name = BUILTIN_NAME
    spurious = ("fg_color",)  # what the default dataset ties to the digit
    pixel_judged = ("fg_color", "bg_color")  # read off the pixels, not learned
    judge_input_name = "stroke map"
    judge_convolutions = 2  # read its digits and thicknesses more precisely than one (docs/generator.md)
    shape_metrics: ClassVar[dict[str, str]] = {
        "stroke_iou": "stroke IoU",
        "stroke_width_error": "stroke width error (px)",
        "stroke_width_change": "stroke width change (px)",
        "stroke_strength": "stroke strength (of the exact stroke's)",
    }
    splits_note = "`test` draws every factor independently; `test_anti` never shows a digit in its training colour."

    def read_pixels(self, images: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        return read_colours(images, names)

    def judge_input(self, images: np.ndarray) -> np.ndarray:
        """What the learned judges read: the strokes without their colours."""
        return stroke_map(images)

    def image_size(self, table: MetadataTable) -> int:
        return int(table.card["builtin"]["config"]["image_size"])

    def judge_data_identity(self, table: MetadataTable) -> str:
        """What the judges' training images depend on: the digits kept out, not the confounding strength."""
        return hashlib.sha256(f"{DIGITS_SHA256}:{held_out_digits(table).tolist()}".encode()).hexdigest()

    def judge_data(
        self, table: MetadataTable, variables: list[Attribute], count: int, seed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Judge-input images of digits no evaluation row uses, every factor drawn independently, and their codes."""
        images, codes = rendered_judge_data(held_out_digits(table), variables, count, self.image_size(table), seed)
        return self.judge_input(images), codes

    def exact_source(self, data: Path, table: MetadataTable) -> ExactSource:
        return ExactSource(data, table)

    def check_edit(self, attributes: list[str]) -> None:
        """Refuse edits that have no exact counterfactual (the label: another digit is another shape)."""
        if LABEL in attributes:
            refuse_label_edit()

    def shape_fidelity(self, generated: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
        return stroke_fidelity(generated, truth)

    def unconfounded(self, data: str | Path, folder: Path) -> Path:
        """The dataset re-rendered with every tie at strength 0: same sizes and seed, so the same digits
        land in the same splits while every factor is drawn independently (the oracle's training data)."""
        config = read_imagefolder(data).card["builtin"]["config"]
        return make_colored_mnist(
            ColoredMNISTConfig(
                ties=tuple((parent, child, 0.0) for parent, child, _ in config["ties"]),
                sizes=dict(config["sizes"]),
                image_size=int(config["image_size"]),
                seed=int(config["seed"]),
            ),
            folder,
        )

    def build(self, folder: Path, strength: float, sizes: dict[str, int] | None, seed: int, **options: Any) -> Path:
        """The default dataset: digit tied to foreground colour at ``strength``."""
        config = ColoredMNISTConfig(strength, sizes=dict(sizes or DEFAULT_SIZES), seed=seed, **options)
        return make_colored_mnist(config, folder)


COLORED_MNIST = ColoredMNIST()

__all__ = [
    "ATTRIBUTES",
    "BUILTIN_NAME",
    "COLORED_MNIST",
    "DEFAULT_SIZES",
    "FACTORS",
    "LABEL",
    "ColoredMNIST",
    "ColoredMNISTConfig",
    "make_colored_mnist",
    "render",
    "render_counterfactual",
]
