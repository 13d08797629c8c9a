"""The soundness figures on edits whose answers are known: the exact renderer, the identity, a drift."""

from pathlib import Path

import numpy as np
import pytest

from cfgen.counterfactuals.soundness import composition, frechet_distance, reversibility, soundness
from cfgen.data.images import ImageFormat, load_images
from cfgen.data.table import read_imagefolder
from cfgen.datasets.colored_mnist import rendering as colored_mnist
from cfgen.datasets.colored_mnist.rendering import ColoredMNISTConfig, make_colored_mnist


def test_frechet_distance_of_known_gaussians() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(4000, 3))
    assert frechet_distance(features, features) == pytest.approx(0, abs=1e-6)
    shifted = features + np.array([1.0, 2.0, 0.0])  # same covariance, means 5 apart in squared distance
    assert frechet_distance(features, shifted) == pytest.approx(5.0, abs=1e-6)
    wider = rng.normal(size=(4000, 3)) * 2  # means 0, covariance 4I against I: 3 x (1 + 4 - 2 x 2) = 3
    assert frechet_distance(features, wider) == pytest.approx(3.0, rel=0.1)


def test_exact_renderer_is_composable_and_reversible_and_a_drift_is_not(tmp_path: Path) -> None:
    data = make_colored_mnist(ColoredMNISTConfig(sizes={"train": 8, "validation": 0, "test": 0, "test_anti": 0}),
                              tmp_path / "data")  # fmt: skip
    table = read_imagefolder(data)
    _, digits, size = colored_mnist.open_builtin(data)
    images = load_images(table.image_paths, ImageFormat((size, size), "RGB"))
    names = ["digit", "fg_color", "bg_color", "thickness", colored_mnist.SOURCE_COLUMN]
    values = [{name: str(table.column(name)[i]) for name in names} for i in range(len(table))]

    def render(batch: np.ndarray, factual: list[dict], targets: list[dict]) -> np.ndarray:
        return np.stack([colored_mnist.render(digits, int(row[colored_mnist.SOURCE_COLUMN]), row, size)
                         for row in targets])  # fmt: skip

    palette = colored_mnist.FG_COLORS
    edited_values = [{**row, "fg_color": next(c for c in palette if c != row["fg_color"])} for row in values]
    counterfactuals = render(images, values, edited_values)
    found = soundness(render, images, values, counterfactuals, edited_values)
    assert set(found) == {"composition_l1_1", "composition_l1_10", "reversibility_l1"}
    assert all(values.shape == (8,) and not values.any() for values in found.values())  # 0 for every image

    def drift(batch: np.ndarray, factual: list[dict], targets: list[dict]) -> np.ndarray:
        return np.clip(batch.astype(int) + 5, 0, 255).astype(np.uint8)  # every edit brightens a little

    drifted = composition(drift, images, values)
    assert (drifted["1"] > 0).all() and (drifted["1"] < drifted["10"]).all()
    assert (reversibility(lambda b, f, t: b, counterfactuals, edited_values, images, values) > 0).all()  # stays


def test_composition_stops_editing_at_a_fixed_point() -> None:
    """A null edit that returns its input is not repeated: the later horizons are the same images."""
    images = np.random.default_rng(0).integers(0, 256, (4, 6, 6, 3), dtype=np.uint8)
    values = [{"fg_color": "red"}] * len(images)
    calls = []

    def saturate(batch: np.ndarray, factual: list[dict], targets: list[dict]) -> np.ndarray:
        calls.append(1)
        return np.clip(batch.astype(int) + 100, 0, 255).astype(np.uint8)  # every pixel at 255 after 3 edits

    found = composition(saturate, images, values)
    assert len(calls) == 4  # three that change the images, one that shows they stopped changing
    white = np.full_like(images, 255)
    expected = np.abs(white.astype(float) - images).reshape(len(images), -1).mean(1) / 255
    np.testing.assert_allclose(found["10"], expected, rtol=1e-6)
    assert (found["1"] < found["10"]).all()
