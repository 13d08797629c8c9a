"""Built-in datasets: folders cfgen draws itself, and therefore knows the truth of.

A folder's card names the built-in dataset that drew it; ``builtin_of`` returns that dataset's
capabilities (a ``BuiltinDataset``) or None for a user's folder. Evaluation, the oracle and the
pipeline's defaults ask for them; the generator never does, so its method is the same on any data.
"""

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cfgen.data.schema import Attribute
from cfgen.data.table import MetadataTable
from cfgen.datasets.colored_mnist import COLORED_MNIST


class BuiltinDataset(Protocol):
    name: str
    spurious: tuple[str, ...]  # the attributes its default configuration ties to the label
    pixel_judged: tuple[str, ...]  # variables read off the pixels instead of by learned judges
    judge_input_name: str
    judge_convolutions: int  # per block of its learned judges' trunk
    splits_note: str  # what its evaluation splits are, for reports
    shape_metrics: dict[str, str]  # the keys ``shape_fidelity`` returns, and their names in reports

    def read_pixels(self, images: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        """Value names of ``names`` read off uint8 (N, H, W, C) images."""
        ...

    def judge_input(self, images: np.ndarray) -> np.ndarray:
        """uint8 images as the learned judges read them."""
        ...

    def image_size(self, table: MetadataTable) -> int: ...

    def judge_data_identity(self, table: MetadataTable) -> str:
        """A digest of everything ``judge_data`` depends on (the judges' cache key)."""
        ...

    def judge_data(
        self, table: MetadataTable, variables: list[Attribute], count: int, seed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Judge-input images no evaluation row shares, with every variable drawn independently, and their codes."""
        ...

    def exact_source(self, data: Path, table: MetadataTable) -> Any:
        """A ``cfgen.counterfactuals.CounterfactualSource`` drawing the exact counterfactuals."""
        ...

    def check_edit(self, attributes: list[str]) -> None: ...

    def shape_fidelity(self, generated: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
        """Judge-free per-image errors of edits against their exact counterfactuals."""
        ...

    def unconfounded(self, data: str | Path, folder: Path) -> Path:
        """The same dataset drawn with every confounding tie at strength 0, written to ``folder``."""
        ...

    def build(self, folder: Path, strength: float, sizes: dict[str, int] | None, seed: int, **options: Any) -> Path:
        """The dataset with its default ties at ``strength``."""
        ...


BUILTIN: dict[str, BuiltinDataset] = {COLORED_MNIST.name: COLORED_MNIST}
DEFAULT: BuiltinDataset = COLORED_MNIST  # what the pipeline builds when no --data is given


def builtin_of(table: MetadataTable) -> BuiltinDataset | None:
    """The built-in dataset that drew ``table``'s folder, or None."""
    return BUILTIN.get((table.card.get("builtin") or {}).get("name"))


__all__ = ["BUILTIN", "DEFAULT", "BuiltinDataset", "builtin_of"]
