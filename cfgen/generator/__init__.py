"""The counterfactual generator: a diffusers UNet conditioned on every variable through an attribute
encoder, trained under confounding, and the ``CounterfactualPipeline`` that edits images with it."""

from cfgen.generator.inference import InferenceSettings
from cfgen.generator.model import Generator
from cfgen.generator.pipeline import CounterfactualPipeline
from cfgen.generator.training import train_generator

__all__ = ["CounterfactualPipeline", "Generator", "InferenceSettings", "train_generator"]
