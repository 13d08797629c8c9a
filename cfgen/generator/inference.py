"""How an edit is made: the inference settings, where they come from, and Otsu's threshold.

The editing itself (abduction, action, prediction) is ``CounterfactualPipeline`` (pipeline.py);
this module holds what it and the commands share: ``InferenceSettings``, the guidance syntax, the
settings of an edit given the defaults saved with a generator, and the threshold of its edit mask.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from cfgen.data.schema import Schema
from cfgen.errors import CfgenError
from cfgen.generator.model import Generator

DEFAULT_STEPS = 20
DEFAULT_INVERSION_DEPTH = 0.6  # measured on colour edits: see docs/generator.md
DEFAULT_GUIDANCE = 3.0
# ddpm: edit-friendly inversion (independent noisy latents, and the correction each decoding step
# needs kept), which carries more of the image into the edit; ddim: deterministic inversion. The
# first is the default: it measured better on colour and background edits (docs/generator.md).
INVERSIONS = ("ddpm", "ddim")
# Where an edit may change the image: everywhere (no); where the model's prediction under the target
# values differs from that under the factual ones (edit: suits what covers little, a stroke's colour);
# wherever the other variables have no say (others: suits what covers much, a background).
LOCALIZE = ("no", "edit", "others")
# What guidance on an edited attribute pushes away from: the prediction with the attribute dropped
# (dropped: classifier-free guidance), or with the attribute at the source image's value (source:
# the edit's own direction, so what is left of the old value is pushed out too; it reaches further
# toward the target and past it, docs/generator.md). Where an edit keeps an attribute's value (a
# hold, a null edit) there is no source direction, and it is dropped.
NEGATIVES = ("dropped", "source")
DEFAULT_NEGATIVE = "dropped"
# What each guided attribute's direction (its two predictions) is conditioned on: every other variable
# (joint), or those not tied to it in the training data (untied: ``Generator.ties``). A tied pair's rare
# combinations are what the model saw least, and the edits of a confounded attribute are those
# combinations; its direction with its ties dropped is learned from every image. (docs/generator.md)
DIRECTIONS = ("joint", "untied")
# What the decoding steps before guidance starts are conditioned on: the target values (target), or
# what the edit keeps alone, its attributes dropped (dropped). Those steps decide the shapes; told a
# value the noisy source does not show, the model redraws the shape to fit it (thick strokes come out
# thin), and told none, it keeps the shape and leaves the value to the guided steps (docs/generator.md).
BEFORE_GUIDANCE = ("target", "dropped")
# What settings saved before a choice existed used (chosen settings, generation records), so that
# generators and counterfactual folders made then are read as they were made.
SAVED_BEFORE = {
    "inversion": "ddim", "guidance_start": 0.0, "negative": DEFAULT_NEGATIVE, "direction": "joint", "hold": 0.0,
    "before_guidance": "target",
}  # fmt: skip


@dataclass(frozen=True)
class InferenceSettings:
    """How to invert and decode; the same settings give the same images."""

    steps: int = DEFAULT_STEPS
    inversion_depth: float = DEFAULT_INVERSION_DEPTH
    guidance: dict[str, float] = field(default_factory=dict)  # variable -> weight, used when decoding
    localize: str = "no"  # one of LOCALIZE: the source is kept outside the model's own mask (``edit_mask``)
    inversion: str = INVERSIONS[0]
    # The fraction of decoding steps, noisiest first, made without guidance. Guidance at high noise
    # redraws shapes, at low noise it changes appearance; where an edit should keep the shape, a late
    # start keeps more of it (docs/generator.md).
    guidance_start: float = 0.0
    negative: str = DEFAULT_NEGATIVE  # one of NEGATIVES
    direction: str = DIRECTIONS[0]
    before_guidance: str = BEFORE_GUIDANCE[0]

    def __post_init__(self) -> None:
        object.__setattr__(self, "localize", saved_localize(self.localize))
        if self.localize not in LOCALIZE:
            raise CfgenError(f"--localize must be one of {', '.join(LOCALIZE)}, not {self.localize!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise CfgenError(f"--steps must be a whole number >= 1, not {self.steps!r}")
        if not 0 < self.inversion_depth <= 1:
            raise CfgenError(
                f"--inversion-depth must be in (0, 1] (a fraction of the noise range), not {self.inversion_depth!r}"
            )
        if self.inversion not in INVERSIONS:
            raise CfgenError(f"--inversion must be one of {', '.join(INVERSIONS)}, not {self.inversion!r}")
        if self.negative not in NEGATIVES:
            raise CfgenError(f"--negative must be one of {', '.join(NEGATIVES)}, not {self.negative!r}")
        if self.direction not in DIRECTIONS:
            raise CfgenError(f"--direction must be one of {', '.join(DIRECTIONS)}, not {self.direction!r}")
        if self.before_guidance not in BEFORE_GUIDANCE:
            raise CfgenError(
                f"--before-guidance must be one of {', '.join(BEFORE_GUIDANCE)}, not {self.before_guidance!r}"
            )
        if not 0 <= self.guidance_start < 1:
            raise CfgenError(
                f"--guidance-start must be in [0, 1) (a fraction of the decoding steps), not {self.guidance_start!r}"
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
            "inversion": self.inversion,
            "guidance_start": self.guidance_start,
            "negative": self.negative,
            "direction": self.direction,
            "before_guidance": self.before_guidance,
        }

    def guided(self, step: int) -> bool:
        """Whether decoding step ``step`` (0: the noisiest) comes at or after ``guidance_start``."""
        return step >= self.guidance_start * self.steps

    def guidance_at(self, step: int) -> dict[str, float]:
        """The guidance weights of decoding step ``step``: none before ``guidance_start``."""
        return self.guidance if self.guided(step) else {}


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


def held_guidance(schema: Schema, edited: Sequence[str], hold: float) -> dict[str, float]:
    """Guidance of weight ``hold`` toward their source values on every variable an edit of ``edited``
    keeps (none for a hold of 0)."""
    return {name: hold for name in schema.names if name not in edited} if hold else {}


def settings_for(
    generator: Generator,
    intervened: Sequence[str],
    steps: int | None = None,
    inversion_depth: float | None = None,
    guidance: str | None = None,
    localize: str | None = None,
    inversion: str | None = None,
    guidance_start: float | None = None,
    negative: str | None = None,
    direction: str | None = None,
    before_guidance: str | None = None,
) -> InferenceSettings:
    """The settings of an edit of ``intervened``: what is given, else what was chosen for those
    attributes on validation data and saved with the generator, else the defaults.

    A joint edit of attributes tuned apart inverts as deep and takes as many steps as the most
    demanding of them needs, guides each attribute with its own weight from the earliest step any of
    them is guided, and is localized (or inverted edit-friendly) when any of them is (masks of two
    kinds: `others`); the variables none of them edits are held with the strongest hold saved for
    them (guidance toward their source values), unless ``guidance`` is given, and guided away from
    their source values when any of them is. Settings saved before the inversion was a choice were
    chosen with DDIM's, those saved before the negative was with the attribute dropped, and those saved
    before the direction was with every other variable; a joint edit's directions are untied when any
    of its attributes' are, and its steps before guidance drop its attributes when any of them chose so
    from a late start.
    """
    chosen = generator.inference.get("attributes", {})
    tuned = [SAVED_BEFORE | chosen[name] for name in intervened if name in chosen]
    direction = (
        direction
        if direction is not None
        else max((t["direction"] for t in tuned), default=DIRECTIONS[0], key=DIRECTIONS.index)
    )
    check_direction(generator, direction)
    if guidance is None:
        weights = {name: chosen.get(name, {}).get("guidance", DEFAULT_GUIDANCE) for name in intervened}
        weights |= held_guidance(generator.schema, intervened, max((t["hold"] for t in tuned), default=0.0))
    else:
        weights = parse_guidance(guidance, generator.schema, intervened)
    return InferenceSettings(
        steps=steps if steps is not None else max((t["steps"] for t in tuned), default=DEFAULT_STEPS),
        inversion_depth=inversion_depth
        if inversion_depth is not None
        else max((t["inversion_depth"] for t in tuned), default=DEFAULT_INVERSION_DEPTH),
        guidance=weights,
        localize=localize
        if localize is not None
        else max((saved_localize(t.get("localize", "no")) for t in tuned), default="no", key=LOCALIZE.index),
        inversion=inversion
        if inversion is not None
        else min((t["inversion"] for t in tuned), default=INVERSIONS[0], key=INVERSIONS.index),
        guidance_start=guidance_start
        if guidance_start is not None
        else min((t["guidance_start"] for t in tuned), default=0.0),
        negative=negative
        if negative is not None
        else "source"
        if any(t["negative"] == "source" for t in tuned)
        else DEFAULT_NEGATIVE,
        direction=direction,
        before_guidance=before_guidance
        if before_guidance is not None
        else max(
            (t["before_guidance"] for t in tuned if t["guidance_start"]),  # only a late start has steps before
            default=BEFORE_GUIDANCE[0],
            key=BEFORE_GUIDANCE.index,
        ),
    )


def check_direction(generator: Generator, direction: str) -> None:
    """Refuse untied directions where the generator has no record of what its training rows tie."""
    if direction == "untied" and not generator.ties:
        raise CfgenError(
            "--direction untied needs the variables the generator's training rows tie, which generators saved "
            "before cfgen recorded them lack; use --direction joint, or train the generator again"
        )


def saved_localize(saved: str | bool) -> str:
    """A mask choice, including the booleans saved before masks had kinds."""
    return {True: "edit", False: "no"}.get(saved, saved)


def _weight(text: str, what: str) -> float:
    try:
        weight = float(text)
    except ValueError:
        raise CfgenError(f"{what} must be a number, not {text!r}") from None
    if not math.isfinite(weight):
        raise CfgenError(f"{what} must be a finite number, not {text!r}")
    return weight


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
