"""Self-training: a second round of training on the generator's own accepted edits of its training images.

Under strong confounding a rare combination of label and attribute values is a few dozen images at
most; reweighting shows them more often but cannot add to them, so the model learns each rare pair
from the few shapes that carry it. A trained generator's edits of the training images to other
values (``cfgen generate --split train``) are mostly such pairs, drawn over every training image's
shape. ``--counterfactuals CF`` adds to the training rows the edits that the generator's judges read
as their row says: the intervened attributes at their targets, every other judged variable as on the
source image. The judges are those of consistency training (``out/judges``), trained on the training
rows alone, so nothing outside the user's data decides. Rejected edits stay out: an edit that missed
its colour, labelled with the colour, teaches that the colour may stay. ``--init-from GEN`` starts the
round from a trained generator's weights, and its folder keeps that generator's inference settings.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cfgen.data.counterfactuals import read_counterfactuals
from cfgen.data.images import ImageFormat, check_images, load_images
from cfgen.data.schema import Schema
from cfgen.data.table import MetadataTable
from cfgen.errors import CfgenError
from cfgen.generator.model import Generator
from cfgen.judges import Judges

ACCEPTANCE = (
    "the generator's judges read every intervened attribute at its target and every other judged variable as "
    "on the source image"
)


@dataclass
class Edits:
    """A counterfactual folder's edits of training images, in memory."""

    table: MetadataTable  # the edits' rows: the data's columns, intervened attributes at their new values
    images: np.ndarray  # uint8 (N, H, W, C)
    sources: np.ndarray  # each edit's source, as an index into the training rows

    def intervened(self, name: str) -> np.ndarray:
        """Which edits set ``name``."""
        return np.array([name in entry.split("+") for entry in self.table.column("cf_intervened")])


def load_edits(
    folder: str | Path,
    data: str | Path,
    full: MetadataTable,
    training_rows: np.ndarray,
    image_format: ImageFormat,
    resize: int | None,
) -> Edits:
    """The edits in ``folder``, checked to be of training rows (``training_rows``, indices into ``full``) in
    the training images' format, before anything is written."""
    table, sources = read_counterfactuals(folder, data, full, training_rows)
    outside = np.flatnonzero(sources < 0)
    if outside.size:
        raise CfgenError(
            f"{folder} edits row {table.column('cf_source_row')[outside[0]]} of {data}, which is not a training row; "
            "self-training learns from edits of the training images only (cfgen generate --split train)"
        )
    found = check_images(table, resize)
    if found != image_format:
        raise CfgenError(
            f"{folder} holds {found.mode} images of {found.size[0]}x{found.size[1]}, the training images are "
            f"{image_format.mode} of {image_format.size[0]}x{image_format.size[1]}"
        )
    return Edits(table, load_images(table.image_paths, image_format), sources)


def accepted_edits(judges: Judges, schema: Schema, edits: Edits, images: np.ndarray) -> np.ndarray:
    """(N,) bool: edits whose judged variables read as their row says (``ACCEPTANCE``); ``images`` are the
    training images the ``edits.sources`` index."""
    on_edits, on_sources = judges(edits.images), judges(images[edits.sources])
    accepted = np.ones(len(edits.images), dtype=bool)
    for name, codes in on_edits.items():
        targets = schema[name].encode(edits.table.column(name))
        accepted &= codes == np.where(edits.intervened(name), targets, on_sources[name])
    return accepted


def start_from(
    folder: str | Path, schema: Schema, image_format: ImageFormat, architecture: str, prediction_type: str
) -> Generator:
    """The trained generator in ``folder``, checked to fit the data, the architecture and the objective of this run."""
    generator = Generator.load(folder)
    if generator.schema.to_dict() != schema.to_dict():
        raise CfgenError(
            f"--init-from {folder} was trained on other variables or values than the data: "
            f"{', '.join(generator.schema.names)} against {', '.join(schema.names)}"
        )
    if generator.image_format != image_format:
        raise CfgenError(
            f"--init-from {folder} makes {generator.image_format.mode} images of {generator.image_format.size[0]}x"
            f"{generator.image_format.size[1]}, the data are {image_format.mode} of {image_format.size[0]}x"
            f"{image_format.size[1]}"
        )
    if generator.training.get("architecture") != architecture:
        raise CfgenError(
            f"--init-from {folder} has the {generator.training.get('architecture')!r} architecture, this run "
            f"{architecture!r}; give --architecture {generator.training.get('architecture')}"
        )
    trained_for = generator.scheduler.config.prediction_type
    if trained_for != prediction_type:
        raise CfgenError(
            f"--init-from {folder} predicts {trained_for}, this run {prediction_type}; "
            f"give --prediction-type {trained_for}"
        )
    return generator
