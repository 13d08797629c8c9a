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
import torch.nn.functional as F
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
    localize: bool = False  # keep the source outside the model's own edit mask (``edit_mask``)

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
        return {
            "steps": self.steps,
            "inversion_depth": self.inversion_depth,
            "guidance": dict(self.guidance),
            "localize": self.localize,
        }


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


def settings_for(
    generator: Generator,
    intervened: Sequence[str],
    steps: int | None = None,
    inversion_depth: float | None = None,
    guidance: str | None = None,
    localize: bool | None = None,
) -> InferenceSettings:
    """The settings of an edit of ``intervened``: what is given, else what was chosen for those
    attributes on validation data and saved with the generator, else the defaults.

    A joint edit of attributes tuned apart inverts as deep and takes as many steps as the most
    demanding of them needs, guides each attribute with its own weight, and is localized when any
    of them is.
    """
    chosen = generator.inference.get("attributes", {})
    tuned = [chosen[name] for name in intervened if name in chosen]
    if guidance is None:
        weights = {name: chosen.get(name, {}).get("guidance", DEFAULT_GUIDANCE) for name in intervened}
    else:
        weights = parse_guidance(guidance, generator.schema, intervened)
    return InferenceSettings(
        steps=steps if steps is not None else max((t["steps"] for t in tuned), default=DEFAULT_STEPS),
        inversion_depth=inversion_depth
        if inversion_depth is not None
        else max((t["inversion_depth"] for t in tuned), default=DEFAULT_INVERSION_DEPTH),
        guidance=weights,
        localize=localize if localize is not None else any(t.get("localize", False) for t in tuned),
    )


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


def inversion_timesteps(generator: Generator, settings: InferenceSettings) -> torch.Tensor:
    """The timesteps DDIM inversion visits, in order; decoding visits them backwards."""
    scheduler = DDIMInverseScheduler.from_config(generator.scheduler.config, **_DDIM)
    scheduler.set_timesteps(_schedule_length(generator, settings))
    return scheduler.timesteps[: settings.steps]


@torch.inference_mode()
def invert_path(
    generator: Generator, images: torch.Tensor, conditions: torch.Tensor, settings: InferenceSettings
) -> list[torch.Tensor]:
    """Abduction, keeping the way: [images, the latent after each DDIM inversion step, ..., the noise at
    ``inversion_depth``]; ``settings.steps`` + 1 latents."""
    scheduler = DDIMInverseScheduler.from_config(generator.scheduler.config, **_DDIM)
    scheduler.set_timesteps(_schedule_length(generator, settings))
    path = [images]
    for t in scheduler.timesteps[: settings.steps]:
        noise = generator.predict_noise(path[-1], t, conditions).to(images.dtype)
        path.append(scheduler.step(noise, int(t), path[-1]).prev_sample)
    return path


def invert(
    generator: Generator, images: torch.Tensor, conditions: torch.Tensor, settings: InferenceSettings
) -> torch.Tensor:
    """Abduction: the noise at ``inversion_depth`` that decodes to ``images`` under ``conditions``."""
    return invert_path(generator, images, conditions, settings)[-1]


@torch.inference_mode()
def edit_mask(
    generator: Generator,
    path: list[torch.Tensor],
    factual: torch.Tensor,
    target: torch.Tensor,
    settings: InferenceSettings,
) -> torch.Tensor:
    """(B, 1, H, W), 1 where the edit may change the image: where the model's noise prediction under the
    target conditions differs from that under the factual ones, summed along the source's inversion
    path, smoothed, split from the rest by Otsu's threshold (per image) and grown by a pixel.

    The model's own answer to "what does this attribute change?": no knowledge of the images.
    """
    difference = torch.zeros_like(path[0][:, :1], dtype=torch.float32)
    for latent, t in zip(path[1:], inversion_timesteps(generator, settings), strict=True):
        predicted = generator.predict_noise(torch.cat([latent, latent]), t, torch.cat([factual, target]))
        before, after = predicted.float().chunk(2)
        difference += (after - before).abs().mean(1, keepdim=True)
    smooth = F.avg_pool2d(difference, 3, stride=1, padding=1, count_include_pad=False)
    return F.max_pool2d((smooth > otsu_threshold(smooth)).float(), 3, stride=1, padding=1)


def otsu_threshold(values: torch.Tensor, candidates: int = 64) -> torch.Tensor:
    """(B, 1, 1, 1): for each of (B, ...) value maps, the level that best splits its values into two
    classes (Otsu: the largest variance between them), among ``candidates`` quantiles."""
    flat = values.flatten(1).float()
    levels = torch.quantile(flat, torch.linspace(0.01, 0.99, candidates, device=flat.device), dim=1).T  # (B, C)
    above = flat[:, None, :] > levels[:, :, None]  # (B, C, N)
    count_above = above.sum(2).clamp(min=1)
    count_below = (~above).sum(2).clamp(min=1)
    mean_above = (flat[:, None, :] * above).sum(2) / count_above
    mean_below = (flat[:, None, :] * ~above).sum(2) / count_below
    share = above.float().mean(2)
    between = share * (1 - share) * (mean_above - mean_below) ** 2
    return levels.gather(1, between.argmax(1, keepdim=True))[:, :, None, None]


@torch.inference_mode()
def decode(
    generator: Generator,
    noise: torch.Tensor,
    conditions: torch.Tensor,
    settings: InferenceSettings,
    keep: tuple[torch.Tensor, list[torch.Tensor]] | None = None,
) -> torch.Tensor:
    """Prediction: DDIM from the noise at ``inversion_depth`` to an image under ``conditions``, guided.

    ``keep`` = (mask, source path): outside the mask each step's result is replaced by the source's
    latent at the same noise level, so what the edit must not touch ends as it was.
    """
    scheduler = DDIMScheduler.from_config(generator.scheduler.config, **_DDIM)
    scheduler.set_timesteps(_schedule_length(generator, settings))
    sample = noise
    for step, t in enumerate(scheduler.timesteps[-settings.steps :]):
        eps = generator.guided_noise(sample, t, conditions, settings.guidance).to(sample.dtype)
        sample = scheduler.step(eps, int(t), sample, eta=0.0).prev_sample
        if keep is not None:
            mask, path = keep
            sample = torch.lerp(path[settings.steps - 1 - step], sample, mask.to(sample.dtype))
    return sample


def edit(
    generator: Generator,
    path: list[torch.Tensor],
    factual: torch.Tensor,
    target: torch.Tensor,
    settings: InferenceSettings,
) -> torch.Tensor:
    """Action and prediction from the source's inversion path (``invert_path``): decode its noise under
    the ``target`` conditions, within the model's own ``edit_mask`` when ``settings.localize``."""
    keep = (edit_mask(generator, path, factual, target, settings), path) if settings.localize else None
    return decode(generator, path[-1], target, settings, keep)


def counterfactuals(
    generator: Generator,
    images: torch.Tensor,
    factual: torch.Tensor,
    target: torch.Tensor,
    settings: InferenceSettings,
) -> torch.Tensor:
    """Abduction -> action -> prediction for a batch: images in [-1, 1], (B, V) condition rows."""
    return edit(generator, invert_path(generator, images, factual, settings), factual, target, settings)
