"""Counterfactual datasets: written by a trained generator or a built-in dataset's exact renderer
(``generate_counterfactuals``), the generator's inference settings chosen on validation data
(``tune_inference``), and their quality (``evaluate_counterfactuals``, with ``soundness``)."""

from cfgen.counterfactuals.generation import generate_counterfactuals, write_example_grid
from cfgen.counterfactuals.metrics import evaluate_counterfactuals
from cfgen.counterfactuals.soundness import soundness
from cfgen.counterfactuals.tuning import tune_inference

__all__ = ["evaluate_counterfactuals", "generate_counterfactuals", "soundness", "tune_inference", "write_example_grid"]
