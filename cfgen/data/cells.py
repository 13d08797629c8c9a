"""Cells of the joint distribution of a dataset's discrete variables: the counts that reweighting,
group-balanced sampling and rarity are computed from."""

import numpy as np

from cfgen.data.schema import Schema


def discrete_columns(schema: Schema) -> list[int]:
    """Positions (in ``schema.names``) of the discrete variables: the ones reweighted and judged."""
    return [i for i, variable in enumerate(schema.variables) if variable.is_discrete]


def editable_columns(schema: Schema) -> list[int]:
    """Positions of the discrete attributes (the label is never edited): what consistency training edits."""
    return [i for i in discrete_columns(schema) if i > 0]


def label_groups(schema: Schema, codes: np.ndarray) -> tuple[np.ndarray, int]:
    """Each row's label code and the number of labels, from (N, V) codes of every variable; one group
    for a continuous label, so that "rare given the label" becomes "rare overall"."""
    if schema.label.is_discrete:
        return codes[:, 0], schema.label.num_values
    return np.zeros(len(codes), dtype=np.int64), 1


def cell_index(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's cell (its combination of discrete codes) and the number of rows in each cell."""
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return inverse.reshape(-1), counts


def effective_sample_size(weights: np.ndarray) -> float:
    """(sum w)^2 / sum w^2: how many unweighted examples the weighted sample is worth."""
    return float(weights.sum() ** 2 / np.square(weights).sum())


def group_balanced_weights(codes: np.ndarray) -> np.ndarray:
    """Weights that make every non-empty cell (label and attribute values) equally likely: 1 / (cells * n_cell)."""
    inverse, counts = cell_index(codes)
    return 1.0 / (len(counts) * counts[inverse])


def pair_counts(
    groups: np.ndarray, values: np.ndarray, num_groups: int, num_values: int, weights: np.ndarray | None = None
) -> np.ndarray:
    """(num_groups, num_values) table of how often each (label group, attribute value) pair occurs, each row
    counted with its weight when ``weights`` are given."""
    pairs = np.bincount(groups * num_values + values, weights=weights, minlength=num_groups * num_values)
    return pairs.reshape(num_groups, num_values)
