"""``CounterfactualPipeline``: a trained generator as a diffusers pipeline that edits attributes of images.

Abduction inverts each image to the noise that produces it under its factual label and attributes;
action replaces the intervened values; prediction decodes the noise under the new values with
guidance per attribute (away from the attribute dropped, classifier-free, or from its source value),
so the edited attributes are pushed toward their targets while what abduction kept carries the rest
of the image.

Two inversions: DDIM's (deterministic: one latent per noise level, all of the image in the final
noise) and an edit-friendly DDPM inversion (Huberman-Spiegelglas et al. 2024: a noisy latent per
level drawn independently, and for each decoding step the correction that leads from one to the
next, so decoding under the factual values lands on the source exactly and the corrections, not
only the final noise, carry the image's layout into the edit). The inversion can stop part-way
(``inversion_depth`` < 1): the coarse structure set at the higher noise levels is then kept and
only the rest is redrawn, trading edit strength for preservation. ``steps`` steps are spread evenly
over the part of the noise range used, with the same timesteps both ways. A localized edit keeps
the source outside the model's own edit mask.

    pipe = CounterfactualPipeline.from_pretrained("runs/gen")      # or DiffusionPipeline.from_pretrained
    out = pipe(images, [{"digit": "3", "fg_color": "red", ...}, ...], "fg_color=green")
    out.images, out.values
"""

import json
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import DDIMInverseScheduler, DDIMScheduler, DiffusionPipeline, UNet2DModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput

from cfgen.data.images import ImageFormat
from cfgen.data.schema import Schema
from cfgen.data.table import MetadataTable
from cfgen.errors import CfgenError
from cfgen.generator.conditioning import AttributeEncoder
from cfgen.generator.inference import InferenceSettings, otsu_threshold, settings_for
from cfgen.generator.model import CONFIG_FILE, Generator
from cfgen.interventions import Intervention, parse_intervention

PIPELINE_INDEX = "model_index.json"
# "leading" spacing puts timesteps at 0, r, 2r, ...: both directions then visit the same levels. No
# clipping of the predicted clean image: it bends the decoding path away from the inverted one (on a
# briefly trained model it raised the reconstruction error of 20-step inversion from 0.002 to 0.065).
DDIM_OPTIONS = {"timestep_spacing": "leading", "steps_offset": 0, "set_alpha_to_one": True, "clip_sample": False}
# The noise level (a share of the training schedule's timesteps) below which an edit outside the kept
# variables' region (``localize="others"``) reaches a pixel into it, to repaint the rim of old values
# round what is kept; from noisier levels on it would redraw the shapes too. A level, not a share of
# the steps: shapes are decided at a noise level whatever the depth an edit starts from
# (docs/generator.md, "The rim round what a background edit keeps").
RIM_NOISE = 0.2

ImageInput = PIL.Image.Image | Sequence[PIL.Image.Image] | torch.Tensor


@dataclass
class CounterfactualPipelineOutput(BaseOutput):
    """``images[k]`` edits source ``sources[k]`` to the intervened ``values[k]`` (several per source for ``a=*``)."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    values: list[dict[str, str]] = field(default_factory=list)
    sources: list[int] = field(default_factory=list)


@dataclass
class InversionPath:
    """Abduction's result: ``latents[0]`` the images, ``latents[k]`` the latent k levels up (the last is
    where decoding starts); with the edit-friendly inversion, ``corrections[s]`` is added to decoding
    step s (from the noisiest), the part of the source's next latent the model does not predict;
    ``factual``, the (B, V) rows the images were inverted under: what guidance pushes an edit away
    from (``InferenceSettings.negative``), and what tells the edited variables the steps before
    guidance may drop (``InferenceSettings.before_guidance``)."""

    latents: list[torch.Tensor]
    corrections: list[torch.Tensor] | None = None
    factual: torch.Tensor | None = None

    def select(self, rows: Sequence[int] | torch.Tensor) -> "InversionPath":
        """The path of the given images (by index, repeats allowed: one per counterfactual)."""
        pick = lambda tensors: [tensor[rows] for tensor in tensors]  # noqa: E731
        return InversionPath(
            pick(self.latents),
            None if self.corrections is None else pick(self.corrections),
            None if self.factual is None else self.factual[rows],
        )


@dataclass
class CounterfactualInversionOutput(BaseOutput):
    """The noise at the inversion depth, every latent on the way there (``path[0]`` is the images) and,
    for the edit-friendly inversion, the correction of each decoding step."""

    latents: torch.Tensor
    path: list[torch.Tensor]
    corrections: list[torch.Tensor] | None = None


class CounterfactualPipeline(DiffusionPipeline):
    """Edits attributes of images with a cfgen generator: ``invert`` (abduction) and ``__call__`` (all three steps).

    Components: the UNet, the attribute encoder, a DDIM scheduler and its inverse. The configuration
    holds the variables (``schema``), the image format, how continuous values are standardised, which
    variables the training rows tie (``ties``), and the inference settings chosen on validation data
    (``cfgen tune-inference``).
    """

    model_cpu_offload_seq = "attribute_encoder->unet"

    def __init__(
        self,
        unet: UNet2DModel,
        attribute_encoder: AttributeEncoder,
        scheduler: DDIMScheduler,
        inverse_scheduler: DDIMInverseScheduler,
        schema: dict | None = None,
        image_format: dict | None = None,
        standardization: dict | None = None,
        inference: dict | None = None,
        ties: dict | None = None,
    ):
        super().__init__()
        self.register_modules(
            unet=unet, attribute_encoder=attribute_encoder, scheduler=scheduler, inverse_scheduler=inverse_scheduler
        )
        self.register_to_config(
            schema=schema, image_format=image_format, standardization=standardization or {}, inference=inference or {},
            ties=ties or {},
        )  # fmt: skip
        self.image_processor = VaeImageProcessor(vae_scale_factor=1, do_resize=False)

    @classmethod
    def from_generator(cls, generator: Generator) -> "CounterfactualPipeline":
        """The pipeline of a generator in memory (trained, or read with ``Generator.load``)."""
        return cls(
            generator.unet,
            generator.encoder,
            DDIMScheduler.from_config(generator.scheduler.config, **DDIM_OPTIONS),
            DDIMInverseScheduler.from_config(generator.scheduler.config, **DDIM_OPTIONS),
            schema=generator.schema.to_dict(),
            image_format={"size": list(generator.image_format.size), "mode": generator.image_format.mode},
            standardization=generator.standardization,
            inference=generator.inference,
            ties=generator.ties,
        )

    @classmethod
    def load(cls, folder: str | Path) -> "CounterfactualPipeline":
        """A generator folder of any cfgen version, including those written before it had a model_index.json."""
        return cls.from_generator(Generator.load(folder))

    @property
    def model(self) -> Generator:
        """The generator the components make up: predictions, guidance and condition rows."""
        return Generator(
            self.unet,
            self.attribute_encoder,
            self.scheduler,
            Schema.from_dict(self.config.schema),
            ImageFormat(tuple(self.config.image_format["size"]), self.config.image_format["mode"]),
            inference=dict(self.config.inference),
            standardization=dict(self.config.standardization),
            ties=dict(self.config.ties),
        )

    # ---- the building blocks, on tensors: images in [-1, 1], (B, V) condition rows ----

    def schedule_length(self, settings: InferenceSettings) -> int:
        """Steps over the whole noise range whose first ``settings.steps`` reach ``inversion_depth``."""
        train_steps = self.scheduler.config.num_train_timesteps
        total = max(settings.steps, round(settings.steps / settings.inversion_depth))
        if total > train_steps:
            raise CfgenError(
                f"--steps {settings.steps} at --inversion-depth {settings.inversion_depth} needs {total} steps "
                f"over the noise range, more than the {train_steps} the generator was trained with; use fewer steps"
            )
        return total

    def inversion_timesteps(self, settings: InferenceSettings) -> torch.Tensor:
        """The timesteps DDIM inversion visits, in order; decoding visits them backwards."""
        self.inverse_scheduler.set_timesteps(self.schedule_length(settings))
        return self.inverse_scheduler.timesteps[: settings.steps]

    def decoding_timesteps(self, settings: InferenceSettings) -> torch.Tensor:
        """The timesteps decoding visits, noisiest first: inversion's, backwards."""
        self.scheduler.set_timesteps(self.schedule_length(settings))
        return self.scheduler.timesteps[-settings.steps :]

    @torch.inference_mode()
    def inversion_path(self, images: torch.Tensor, factual: torch.Tensor, settings: InferenceSettings) -> InversionPath:
        """Abduction, keeping the way: every latent from the images up to the noise (and the corrections)."""
        if settings.inversion == "ddpm":
            return self.edit_friendly_inversion(images, factual, settings)
        model = self.model
        path = [images]
        for t in self.inversion_timesteps(settings):
            predicted = model.predict(path[-1], t, factual).to(images.dtype)
            path.append(self.inverse_scheduler.step(predicted, int(t), path[-1]).prev_sample)
        return InversionPath(path, factual=factual)

    @torch.inference_mode()
    def edit_friendly_inversion(
        self, images: torch.Tensor, factual: torch.Tensor, settings: InferenceSettings
    ) -> InversionPath:
        """Each level's latent noised from the images independently; each decoding step's correction is
        what DDPM's step (eta 1, no noise of its own) under the factual values misses of the next one.

        The noise is drawn from each image's own content, so an image gets the same edit whatever
        batch, process or position it comes in.
        """
        model = self.model
        timesteps = self.decoding_timesteps(settings)  # noisiest first
        noise = torch.stack([
            torch.randn((settings.steps, *image.shape), generator=torch.Generator().manual_seed(_content_seed(image)))
            for image in images
        ], dim=1).to(images.device, images.dtype)  # fmt: skip
        alphas = self.scheduler.alphas_cumprod.to(images.device)
        latents = [images]
        for level, t in enumerate(timesteps.flip(0)):  # latents[level + 1] is at timestep t
            a = alphas[t].to(images.dtype)
            latents.append(a.sqrt() * images + (1 - a).sqrt() * noise[level])
        corrections = []
        for step, t in enumerate(timesteps):
            sample, target = latents[settings.steps - step], latents[settings.steps - 1 - step]
            predicted = model.predict(sample, t, factual).to(images.dtype)
            corrections.append(target - self.ddpm_step(predicted, t, sample))
        return InversionPath(latents, corrections, factual)

    def ddpm_step(self, predicted: torch.Tensor, t: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The mean of DDPM's step from ``t`` to the previous decoding timestep (DDIM with eta 1, no noise)."""
        zero = torch.zeros_like(sample)
        return self.scheduler.step(predicted, int(t), sample, eta=1.0, variance_noise=zero).prev_sample

    @torch.inference_mode()
    def edit_mask(
        self, path: InversionPath, factual: torch.Tensor, target: torch.Tensor, settings: InferenceSettings
    ) -> torch.Tensor | None:
        """(steps, B, 1, H, W): for each decoding step, noisiest first, 1 where the edit may change the
        image; from the model's own predictions along the source's inversion path, no knowledge of the
        images. None where the edit is not localized (``settings.localize`` "no").

        ``edit``: where the noise predicted under the target values differs from that under the factual
        ones, split from the rest by Otsu's threshold (per image) and grown by a pixel, at every step.
        ``others``: everywhere but what the variables the edit keeps have a say in (where forgetting one
        of them changes the prediction), that region split off likewise. Their say spreads a little
        round what they draw, so the region holds a band of the old values (a rim of the old background
        round every stroke); it is kept whole while shapes are decided, and in the steps from timesteps
        below ``RIM_NOISE`` of the schedule the edit reaches a pixel into it.
        """
        if settings.localize == "no":
            return None
        model = self.model
        kept = (target == factual).float()  # (B, V): the variables the edit keeps
        influence = torch.zeros_like(path.latents[0][:, :1], dtype=torch.float32)
        for latent, t in zip(path.latents[1:], self.inversion_timesteps(settings), strict=True):
            if settings.localize == "edit":
                predicted = model.predict_noise(torch.cat([latent, latent]), t, torch.cat([factual, target]))
                before, after = predicted.chunk(2)
                influence += (after - before).abs().mean(1, keepdim=True)
                continue
            batch, variables = factual.shape
            forget = ~torch.eye(variables, dtype=torch.bool, device=factual.device).repeat_interleave(batch, 0)
            predicted = model.predict_noise(
                latent.repeat(variables + 1, 1, 1, 1), t, factual.repeat(variables + 1, 1),
                torch.cat([torch.ones_like(forget[:batch]), forget]),
            )  # fmt: skip
            full, without = predicted[:batch], predicted[batch:].reshape(variables, *latent.shape)
            change = (without - full).abs().mean(2, keepdim=True)  # (V, B, 1, H, W)
            influence += (change * kept.T[:, :, None, None, None]).sum(0)
        smooth = F.avg_pool2d(influence, 3, stride=1, padding=1, count_include_pad=False)
        region = (smooth > otsu_threshold(smooth)).float()
        if settings.localize == "edit":
            grown = F.max_pool2d(region, 3, stride=1, padding=1)
            return grown.expand(settings.steps, *grown.shape)
        edit = 1 - region
        into_rim = F.max_pool2d(edit, 3, stride=1, padding=1)
        rim_levels = self.decoding_timesteps(settings) < RIM_NOISE * self.scheduler.config.num_train_timesteps
        return torch.stack([into_rim if at_rim_level else edit for at_rim_level in rim_levels])

    @torch.inference_mode()
    def decode(
        self,
        path: InversionPath,
        target: torch.Tensor,
        settings: InferenceSettings,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Prediction: from the path's noise to an image under ``target``, guided per attribute from
        ``settings.guidance_start`` on, away from the path's factual values or the attribute dropped
        (``settings.negative``), given every variable or those untied to the attribute
        (``settings.direction``) (DDIM, or DDPM's step plus the path's corrections). The steps before
        guidance are conditioned on the target values, or on what the edit keeps alone
        (``settings.before_guidance``: each row's edited variables dropped).

        With a ``mask`` (``edit_mask``: one per step), each step's result outside it is replaced by the
        source's latent at the same noise level, so what the edit must not touch ends as it was.
        """
        model = self.model
        if settings.negative == "source" and path.factual is None and any(settings.guidance.values()):
            raise ValueError("guidance away from the source needs the path's factual values (InversionPath.factual)")
        dropped = settings.before_guidance == "dropped" and settings.guidance_start > 0
        if dropped and path.factual is None:
            raise ValueError("dropping the edited values needs the path's factual values (InversionPath.factual)")
        negative = path.factual if settings.negative == "source" else None
        untie = model.ties if settings.direction == "untied" else None
        kept = path.factual == target if dropped else None  # (B, V): what each row's edit keeps
        sample = path.latents[-1]
        for step, t in enumerate(self.decoding_timesteps(settings)):
            if dropped and not settings.guided(step):
                predicted = model.predict(sample, t, target, kept)
            else:
                predicted = model.guided_prediction(sample, t, target, settings.guidance_at(step), negative, untie)
            predicted = predicted.to(sample.dtype)
            if path.corrections is None:
                sample = self.scheduler.step(predicted, int(t), sample, eta=0.0).prev_sample
            else:
                sample = self.ddpm_step(predicted, t, sample) + path.corrections[step]
            if mask is not None:
                sample = torch.lerp(path.latents[settings.steps - 1 - step], sample, mask[step].to(sample.dtype))
        return sample

    def edit(
        self, path: InversionPath, factual: torch.Tensor, target: torch.Tensor, settings: InferenceSettings
    ) -> torch.Tensor:
        """Action and prediction from a source's inversion path, within the model's own mask when localized."""
        return self.decode(path, target, settings, self.edit_mask(path, factual, target, settings))

    # ---- what users call: images, rows of values and an intervention in ----

    def prepare_images(self, images: ImageInput) -> torch.Tensor:
        """PIL images (or a (B, C, H, W) tensor in [0, 1]) in the generator's format, as a tensor in [-1, 1]."""
        expected = ImageFormat(tuple(self.config.image_format["size"]), self.config.image_format["mode"])
        if isinstance(images, PIL.Image.Image):
            images = [images]
        if not isinstance(images, torch.Tensor):
            expected.check(images, "this generator")
        tensor = self.image_processor.preprocess(images)
        if tensor.shape[1:] != (expected.channels, expected.size[1], expected.size[0]):
            raise CfgenError(f"images of shape {tuple(tensor.shape[1:])} do not match this generator's {expected}")
        return tensor.to(self._execution_device, self.unet.dtype)

    def factual_rows(self, factual: Sequence[dict[str, Any]] | MetadataTable) -> list[dict[str, str]]:
        """One dict of values per image, from dicts or from the rows of a dataset table."""
        if isinstance(factual, MetadataTable):
            names = [name for name in self.model.schema.names if name in factual.columns]
            return [{name: str(factual.columns[name][i]) for name in names} for i in range(len(factual))]
        return [{name: str(value) for name, value in row.items()} for row in factual]

    def prepare_conditions(self, rows: Sequence[dict[str, Any]]) -> torch.Tensor:
        """(B, V) condition rows from one dict of values per image (every variable the generator knows)."""
        model = self.model
        names = model.schema.names
        conditions = []
        for row in rows:
            missing = [name for name in names if name not in row]
            if missing:
                raise CfgenError(f"a factual row lacks {missing[0]!r}; give every variable: {', '.join(names)}")
            conditions.append([model.condition_value(name, str(row[name])) for name in names])
        return torch.tensor(conditions, dtype=torch.float32, device=self._execution_device)

    def invert(
        self,
        images: ImageInput,
        factual: Sequence[dict[str, Any]] | MetadataTable,
        steps: int | None = None,
        inversion_depth: float | None = None,
        inversion: str | None = None,
    ) -> CounterfactualInversionOutput:
        """Abduction alone: the noise at ``inversion_depth`` that decodes to ``images`` under ``factual``
        (``inversion``: "ddim" or the edit-friendly "ddpm")."""
        settings = settings_for(self.model, (), steps, inversion_depth, inversion=inversion)
        rows = self.prepare_conditions(self.factual_rows(factual))
        path = self.inversion_path(self.prepare_images(images), rows, settings)
        return CounterfactualInversionOutput(latents=path.latents[-1], path=path.latents, corrections=path.corrections)

    @torch.inference_mode()
    def __call__(
        self,
        images: ImageInput,
        factual: Sequence[dict[str, Any]] | MetadataTable,
        intervention: str | dict[str, str],
        steps: int | None = None,
        inversion_depth: float | None = None,
        guidance: str | float | None = None,
        localize: str | None = None,
        inversion: str | None = None,
        guidance_start: float | None = None,
        negative: str | None = None,
        direction: str | None = None,
        before_guidance: str | None = None,
        seed: int = 0,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> CounterfactualPipelineOutput | tuple:
        """Edit each image (PIL, or a tensor in [0, 1]) given its factual values (dicts, or a dataset's rows)
        as ``intervention`` says: ``"fg_color=green"``, ``{"fg_color": "green"}``,
        ``"fg_color=random"`` (another value per image, drawn from ``seed``) or ``"fg_color=*"`` (every
        other value). Unset settings are those chosen on validation data for the edited attributes."""
        model = self.model
        # 1. Check and encode the inputs: images in [-1, 1], the factual values as condition rows
        source_images = self.prepare_images(images)
        factual = self.factual_rows(factual)
        factual_rows = self.prepare_conditions(factual)
        if len(factual_rows) != len(source_images):
            raise CfgenError(f"{len(source_images)} images but {len(factual_rows)} rows of factual values")
        if isinstance(intervention, dict):
            intervention = ",".join(f"{name}={value}" for name, value in intervention.items())
        parsed: Intervention = parse_intervention(intervention, model.schema)

        # 2. Action: the values each counterfactual sets, and its condition row
        rng = np.random.default_rng(seed)
        sources, values = [], []
        for k, row in enumerate(factual):
            for target in parsed.targets(model.schema, row, rng):
                sources.append(k)
                values.append(target)
        target_rows = factual_rows[sources].clone()
        for k, target in enumerate(values):
            for name, value in target.items():
                target_rows[k, model.schema.names.index(name)] = model.condition_value(name, value)

        # 3. The inference settings: those given, else those chosen for the edited attributes
        weights = None if guidance is None else str(guidance)
        settings = settings_for(
            model, parsed.attributes, steps, inversion_depth, weights, localize, inversion, guidance_start, negative,
            direction, before_guidance,
        )  # fmt: skip

        # 4. Abduction: invert each source image once, along its path
        path = self.inversion_path(source_images, factual_rows, settings).select(sources)

        # 5. Prediction: decode under the target values (within the model's own mask when localized)
        edited = self.edit(path, factual_rows[sources], target_rows, settings)

        # 6. Post-process
        edited = self.image_processor.postprocess(edited.float(), output_type=output_type)
        if output_type == "pil" and model.image_format.mode != "RGB":
            edited = [image.convert(model.image_format.mode) for image in edited]
        self.maybe_free_model_hooks()
        if not return_dict:
            return edited, values, sources
        return CounterfactualPipelineOutput(images=edited, values=values, sources=sources)


def save_generator(generator: Generator, folder: str | Path) -> None:
    """Write a generator folder: the pipeline (model_index.json and a folder per component), its model
    card, then cfgen_generator.json, last, which marks a complete folder and keeps the training record."""
    folder = Path(folder)
    CounterfactualPipeline.from_generator(generator).save_pretrained(folder)
    (folder / "README.md").write_text(model_card(generator.record()))
    generator.save_record(folder)


def model_card(record: dict[str, Any]) -> str:
    """README.md of a generator folder, from its record (``Generator.record``, cfgen_generator.json): what it
    was trained on and how, and how to use it."""
    schema, training, inference = Schema.from_dict(record["schema"]), record["training"], record["inference"]
    data = training.get("data", {})
    variables = "\n".join(
        f"| {v.name} | {'label' if v is schema.label else 'attribute'} | {v.kind} | "
        f"{', '.join(v.values) if v.is_discrete else 'standardised number'} |"
        for v in schema.variables
    )
    (width, height), mode = record["image_format"]["size"], record["image_format"]["mode"]
    predicted = "the velocity" if training.get("prediction_type") == "v_prediction" else "the noise"
    ties = record.get("ties", {})  # every discrete variable has an entry since generators record them
    pairs = sorted({tuple(sorted((a, b))) for a, others in ties.items() for b in others})
    tied = "; ".join(f"{a} and {b}" for a, b in pairs) or ("none" if ties else "not recorded (an older generator)")
    return f"""---
library_name: diffusers
tags: [cfgen, counterfactuals, diffusion]
---

# cfgen counterfactual generator

Edits the attributes of {width}x{height} {mode} images: inversion under the factual values, decoding
under the intervened ones with guidance per attribute (`CounterfactualPipeline`).

```python
import cfgen.generator.pipeline  # registers the pipeline class with diffusers
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained("path/to/this/folder")
out = pipe(images, factual_rows, "{schema.attributes[0].name}=random")  # out.images, out.values
```

## Data

{data.get("images", "?")} images of the `{data.get("split", "?")}` split of `{data.get("path", "?")}`.

| variable | role | kind | values |
|---|---|---|---|
{variables}

Tied in these rows (`ties`; `--direction untied` guides each without the other): {tied}.

## Training

{training.get("architecture", "?")} UNet predicting {predicted}, {training.get("steps", "?")} steps at an
effective batch of {training.get("effective_batch_size", "?")} ({training.get("mixed_precision", "?")} precision,
{training.get("seconds", "?")} s), deconfounding: {", ".join(training.get("deconfound", [])) or "none"}.
The full record is `cfgen_generator.json` (`training`).

## Quality

Not measured by training. `cfgen evaluate-counterfactuals` scores a counterfactual folder
(effectiveness, preservation, error to exact counterfactuals where they exist), and
`cfgen tune-inference` chooses the inference settings on validation data
(chosen: {json.dumps(inference["attributes"]) if inference.get("attributes") else "none yet"}).
"""


def store_inference(folder: str | Path, inference: dict[str, Any]) -> None:
    """Make ``inference`` the saved defaults of a generator folder, in both records, each atomically."""
    folder = Path(folder)
    for name in (PIPELINE_INDEX, CONFIG_FILE):
        path = folder / name
        if path.is_file():
            config = json.loads(path.read_text())
            config["inference"] = inference
            partial = folder / f".{name}.partial"
            partial.write_text(json.dumps(config, indent=2) + "\n")
            os.replace(partial, path)
    # the card from the record just written: no need to load the weights
    (folder / "README.md").write_text(model_card(json.loads((folder / CONFIG_FILE).read_text())))


def _content_seed(image: torch.Tensor) -> int:
    """A seed from an image's pixels (as 8-bit values, so that precision does not change it)."""
    pixels = ((image.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return zlib.crc32(pixels.numpy().tobytes())


# DiffusionPipeline.from_pretrained finds a pipeline class by its name in the diffusers namespace.
diffusers.CounterfactualPipeline = CounterfactualPipeline
