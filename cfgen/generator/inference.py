"""Counterfactual inference: abduction -> action -> prediction with DDIM.

Abduction inverts an image to the noise that produces it under its factual label and attributes
(DDIM inversion, deterministic). Action replaces the intervened values in the conditions.
Prediction decodes that noise under the new conditions with DDIM, with classifier-free guidance per
attribute so that the edited attributes are pushed toward their targets while the rest of the image
is carried by the inverted noise.

The inversion can stop part-way (``inversion_depth`` < 1): the coarse structure set at the higher
noise levels (the digit's shape, the layout) is then kept as it is and only the rest is redrawn,
which trades edit strength for preservation. ``steps`` DDIM steps are spread evenly over the part of
the noise range used, in each direction, with the same timesteps both ways so that decoding under
the factual conditions retraces the inversion.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler

from cfgen.data.schema import Schema
from cfgen.errors import CfgenError
from cfgen.generator.model import Generator

DEFAULT_STEPS = 20
DEFAULT_INVERSION_DEPTH = 0.6  # measured on colour edits: see docs/generator.md
DEFAULT_GUIDANCE = 3.0


@dataclass(frozen=True)
class InferenceSettings:
    """How to invert and decode; the same settings give the same images."""

    steps: int = DEFAULT_STEPS
    inversion_depth: float = DEFAULT_INVERSION_DEPTH
    guidance: dict[str, float] = field(default_factory=dict)  # variable -> weight, used when decoding

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise CfgenError(f"--steps must be a whole number >= 1, not {self.steps!r}")
        if not 0 < self.inversion_depth <= 1:
            raise CfgenError(
                f"--inversion-depth must be in (0, 1] (a fraction of the noise range), not {self.inversion_depth!r}"
            )
        bad = [name for name, weight in self.guidance.items() if not math.isfinite(weight)]
        if bad:
            raise CfgenError(f"guidance weight of {bad[0]!r} must be a finite number")

    def to_dict(self) -> dict:
        return {"steps": self.steps, "inversion_depth": self.inversion_depth, "guidance": dict(self.guidance)}


def parse_guidance(text: str | None, schema: Schema, intervened: Sequence[str]) -> dict[str, float]:
    """``None`` -> the default weight on the intervened attributes; ``"2"`` -> 2 on each of them;
    ``"fg_color=3,digit=1"`` -> exactly those weights (any variable of the schema, others unguided)."""
    if text is None:
        return {name: DEFAULT_GUIDANCE for name in intervened}
    text = text.strip()
    if "=" not in text:
        return {name: _weight(text, "--guidance") for name in intervened}
    weights: dict[str, float] = {}
    for piece in text.split(","):
        name, sep, value = (part.strip() for part in piece.partition("="))
        if not sep or not name or not value:
            raise CfgenError(
                f"cannot read {piece.strip()!r} in --guidance {text!r}; write attribute=weight or one number"
            )
        schema[name]  # unknown names get an error listing the valid ones
        if name in weights:
            raise CfgenError(f"{name!r} appears twice in --guidance {text!r}")
        weights[name] = _weight(value, f"the guidance of {name!r}")
    return weights


def _weight(text: str, what: str) -> float:
    try:
        weight = float(text)
    except ValueError:
        raise CfgenError(f"{what} must be a number, not {text!r}") from None
    if not math.isfinite(weight):
        raise CfgenError(f"{what} must be a finite number, not {text!r}")
    return weight


def _schedule_length(generator: Generator, settings: InferenceSettings) -> int:
    """Steps over the whole noise range whose first ``settings.steps`` reach ``inversion_depth``."""
    train_steps = generator.scheduler.config.num_train_timesteps
    total = max(settings.steps, round(settings.steps / settings.inversion_depth))
    if total > train_steps:
        raise CfgenError(
            f"--steps {settings.steps} at --inversion-depth {settings.inversion_depth} needs {total} steps over "
            f"the noise range, more than the {train_steps} the generator was trained with; use fewer steps"
        )
    return total


# "leading" spacing puts timesteps at 0, r, 2r, ...: both directions then visit the same levels. No
# clipping of the predicted clean image: it bends the decoding path away from the inverted one (on a
# briefly trained model it raised the reconstruction error of 20-step inversion from 0.002 to 0.065).
_DDIM = {"timestep_spacing": "leading", "steps_offset": 0, "set_alpha_to_one": True, "clip_sample": False}


@torch.inference_mode()
def invert(
    generator: Generator, images: torch.Tensor, conditions: torch.Tensor, settings: InferenceSettings
) -> torch.Tensor:
    """Abduction: the noise at ``inversion_depth`` that decodes to ``images`` under ``conditions``."""
    scheduler = DDIMInverseScheduler.from_config(generator.scheduler.config, **_DDIM)
    scheduler.set_timesteps(_schedule_length(generator, settings))
    sample = images
    for t in scheduler.timesteps[: settings.steps]:
        noise = generator.predict_noise(sample, t, conditions).to(sample.dtype)
        sample = scheduler.step(noise, int(t), sample).prev_sample
    return sample


@torch.inference_mode()
def decode(
    generator: Generator, noise: torch.Tensor, conditions: torch.Tensor, settings: InferenceSettings
) -> torch.Tensor:
    """Prediction: DDIM from the noise at ``inversion_depth`` to an image under ``conditions``, guided."""
    scheduler = DDIMScheduler.from_config(generator.scheduler.config, **_DDIM)
    scheduler.set_timesteps(_schedule_length(generator, settings))
    sample = noise
    for t in scheduler.timesteps[-settings.steps :]:
        eps = generator.guided_noise(sample, t, conditions, settings.guidance).to(sample.dtype)
        sample = scheduler.step(eps, int(t), sample, eta=0.0).prev_sample
    return sample


def counterfactuals(
    generator: Generator,
    images: torch.Tensor,
    factual: torch.Tensor,
    target: torch.Tensor,
    settings: InferenceSettings,
) -> torch.Tensor:
    """Abduction -> action -> prediction for a batch: images in [-1, 1], (B, V) condition rows."""
    return decode(generator, invert(generator, images, factual, settings), target, settings)
