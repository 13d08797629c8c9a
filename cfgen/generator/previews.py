"""Training previews: a grid of originals, their factual decodes and one edited row per attribute, drawn
with the EMA weights every ``sample_every`` steps."""

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from diffusers.training_utils import EMAModel
from torch import nn

from cfgen.data.cells import editable_columns, label_groups, pair_counts
from cfgen.data.schema import Schema
from cfgen.data.tensors import to_uint8
from cfgen.generator.inference import DEFAULT_GUIDANCE, InferenceSettings
from cfgen.generator.model import Generator
from cfgen.generator.pipeline import CounterfactualPipeline
from cfgen.grids import labelled_grid

SAMPLES_FOLDER = "samples"
PREVIEW_EXAMPLES = 8


@contextmanager
def ema_weights(ema: EMAModel, model: nn.Module) -> Iterator[None]:
    """Swap the EMA weights into ``model`` for the block, then put the training weights back."""
    parameters = list(model.parameters())
    ema.store(parameters)
    ema.copy_to(parameters)
    try:
        yield
    finally:
        ema.restore(parameters)


def preview_setup(
    schema: Schema, conditions: torch.Tensor, seed: int
) -> tuple[np.ndarray, list[tuple[str, torch.Tensor]]]:
    """Fixed preview examples, and for each discrete attribute their conditions with that attribute set to
    the value it was rarest with, given the label, in training: the hard case of a confounded model."""
    codes = conditions.long().numpy()
    rows = np.sort(np.random.default_rng(seed).choice(len(codes), min(PREVIEW_EXAMPLES, len(codes)), replace=False))
    groups, num_groups = label_groups(schema, codes)
    edits = []
    for column in editable_columns(schema):
        counts = pair_counts(groups, codes[:, column], num_groups, schema.variables[column].num_values).astype(float)
        counts = counts[groups[rows]]
        counts[np.arange(len(rows)), codes[rows, column]] = np.inf
        edited = conditions[rows].clone()
        edited[:, column] = torch.from_numpy(counts.argmin(1)).float()
        edits.append((schema.names[column], edited))
    return rows, edits


@torch.no_grad()
def preview_grid(
    generator: Generator, images: torch.Tensor, conditions: torch.Tensor, edits: list[tuple[str, torch.Tensor]]
) -> np.ndarray:
    """Labelled rows: the originals (captioned with their label), their reconstruction (inverted and decoded
    under their own conditions), then one row of counterfactuals per edit, each captioned with the value it
    set, made as ``cfgen generate`` makes them with its default settings."""
    schema = generator.schema
    pipeline = CounterfactualPipeline.from_generator(generator)
    path = pipeline.inversion_path(images, conditions, InferenceSettings())

    def captions(name: str, rows: torch.Tensor) -> list[str]:
        values = schema[name].values
        return [f"{name}={values[int(code)]}" for code in rows[:, schema.names.index(name)]]

    rows = [(images, captions(schema.label.name, conditions), "source"),
            (pipeline.decode(path, conditions, InferenceSettings()), [""] * len(images), "reconstruction")]  # fmt: skip
    for name, target in edits:
        target = target.to(conditions.device)
        edited = pipeline.decode(path, target, InferenceSettings(guidance={name: DEFAULT_GUIDANCE}))
        rows.append((edited, captions(name, target), f"edit {name}"))
    cells = [list(zip(to_uint8(tiles), texts, strict=True)) for tiles, texts, _ in rows]
    return labelled_grid(cells, [label for _, _, label in rows])
