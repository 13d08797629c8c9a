"""The counterfactual generator: a diffusers UNet, the attribute encoder and the noise schedule.

Saved (``save_generator`` in pipeline.py) as a folder that diffusers opens whole or part by part:

    model_index.json      CounterfactualPipeline.from_pretrained(folder) (or DiffusionPipeline's)
    unet/                 UNet2DModel.from_pretrained(folder, subfolder="unet")
    attribute_encoder/    cfgen's AttributeEncoder (diffusers ModelMixin format)
    scheduler/            DDIMScheduler; inverse_scheduler/: DDIMInverseScheduler
    cfgen_generator.json  written last: the schema (names, kinds, vocabularies), image format, how
                          continuous values are standardised, the training record and the inference
                          settings chosen on validation data (``cfgen tune-inference``)
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel

from cfgen.confounding.statistics import bergsma_v, chi2_batch, contingency
from cfgen.data.images import ImageFormat
from cfgen.data.schema import Schema
from cfgen.data.table import MetadataTable
from cfgen.errors import CfgenError
from cfgen.generator.conditioning import AttributeEncoder

CONFIG_FILE = "cfgen_generator.json"

# UNet sizes; "quick" trains in minutes on a 2-core CPU (a 16-channel first level: the 28 px convolutions
# dominate the cost), "full" is meant for a GPU.
ARCHITECTURES = {
    "tiny": {"block_out_channels": (16, 32), "layers_per_block": 1, "attention": False},
    "quick": {"block_out_channels": (16, 32, 64), "layers_per_block": 1, "attention": False},
    "full": {"block_out_channels": (64, 128, 256), "layers_per_block": 2, "attention": True},
}
# What the UNet predicts (diffusers' ``prediction_type``): the noise, or the velocity sqrt(a) noise -
# sqrt(1 - a) image, whose error at high noise levels is an error of the clean image itself rather
# than of the noise (where the noise is nearly all of the sample and says little about the image).
PREDICTION_TYPES = ("epsilon", "v_prediction")


def predicted_clean(
    output: torch.Tensor, sample: torch.Tensor, alpha: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """The clean image a prediction implies, for a sample at cumulative signal share ``alpha``."""
    signal, spread = alpha.sqrt(), (1 - alpha).sqrt()
    if prediction_type == "v_prediction":
        return signal * sample - spread * output
    return (sample - spread * output) / signal


def predicted_noise(
    output: torch.Tensor, sample: torch.Tensor, alpha: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """The noise a prediction implies, for a sample at cumulative signal share ``alpha``."""
    if prediction_type == "v_prediction":
        return (1 - alpha).sqrt() * sample + alpha.sqrt() * output
    return output


def build_unet(image_format: ImageFormat, architecture: str) -> UNet2DModel:
    """A UNet2DModel whose timestep embedding receives the attribute embedding (identity class embedding)."""
    if architecture not in ARCHITECTURES:
        raise CfgenError(f"unknown architecture {architecture!r}; valid: {', '.join(ARCHITECTURES)}")
    spec = ARCHITECTURES[architecture]
    channels = spec["block_out_channels"]
    down = ["DownBlock2D"] * len(channels)
    up = ["UpBlock2D"] * len(channels)
    if spec["attention"]:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=image_format.size[1],
        in_channels=image_format.channels,
        out_channels=image_format.channels,
        block_out_channels=channels,
        layers_per_block=spec["layers_per_block"],
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        norm_num_groups=min(32, channels[0] // 2),
        class_embed_type="identity",
    )


@dataclass
class Generator:
    """Everything needed to denoise an image under any (partially known) attributes."""

    unet: UNet2DModel
    encoder: AttributeEncoder
    scheduler: DDPMScheduler
    schema: Schema
    image_format: ImageFormat
    training: dict = field(default_factory=dict)  # the choices it was trained with, for the record
    # per attribute, the inference settings its edits use by default, and how they were chosen:
    # {"attributes": {name: {"steps", "inversion_depth", "guidance", "localize", "inversion", "guidance_start",
    #                        "negative", "direction", "before_guidance", "hold"}},
    #  "selection": {...}}
    inference: dict = field(default_factory=dict)
    # per continuous variable, [centre, scale] of its training values: the encoder sees (value - centre) / scale,
    # numbers near 1 whatever the column's units (folders saved before this had none: values as they are)
    standardization: dict[str, list[float]] = field(default_factory=dict)
    # per discrete variable, the others tied to it in the training rows (``variable_ties``): what a guidance
    # direction given what is untied leaves out (folders saved before this had none: nothing tied)
    ties: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        schema: Schema,
        image_format: ImageFormat,
        architecture: str = "quick",
        table: MetadataTable | None = None,
        prediction_type: str = "epsilon",
    ) -> "Generator":
        """A new generator; ``table`` (the training rows) sets how continuous variables are standardised
        and which variables are tied."""
        unet = build_unet(image_format, architecture)
        encoder = AttributeEncoder.for_schema(schema, unet.config.block_out_channels[0] * 4)
        scheduler = DDPMScheduler(
            num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type
        )
        standardization = {}
        for variable in schema.variables:
            if not variable.is_discrete and table is not None:
                values = variable.encode(table.column(variable.name))
                largest = np.abs(values).max() or 1.0  # divided first, so that no sum overflows
                standardization[variable.name] = [
                    float(largest * np.mean(values / largest)),
                    float(largest * np.std(values / largest)) or 1.0,
                ]
        ties = variable_ties(schema, table) if table is not None else {}
        return cls(
            unet, encoder, scheduler, schema, image_format, {"architecture": architecture}, {}, standardization, ties
        )

    def modules(self) -> torch.nn.ModuleDict:
        """The trainable parts as one module, for optimizers, EMA and accelerate."""
        return torch.nn.ModuleDict({"unet": self.unet, "encoder": self.encoder})

    def predict(
        self, sample: torch.Tensor, timesteps: torch.Tensor, conditions: torch.Tensor, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The UNet's output: the noise or the velocity, as the scheduler's ``prediction_type`` says."""
        return self.unet(sample, timesteps, class_labels=self.encoder(conditions, keep)).sample

    def predict_noise(
        self, sample: torch.Tensor, timesteps: torch.Tensor, conditions: torch.Tensor, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The noise the UNet's output implies (float32), whatever it predicts: edit masks compare these,
        so that a mask weighs the noise levels alike for either prediction type."""
        alpha = self.scheduler.alphas_cumprod.to(sample.device)[timesteps].reshape(-1, 1, 1, 1)
        output = self.predict(sample, timesteps, conditions, keep).float()
        return predicted_noise(output, sample.float(), alpha, self.scheduler.config.prediction_type)

    def guided_prediction(
        self,
        sample: torch.Tensor,
        timesteps: torch.Tensor,
        conditions: torch.Tensor,
        guidance: dict[str, float],
        negative: torch.Tensor | None = None,
        untie: dict[str, Sequence[str]] | None = None,
    ) -> torch.Tensor:
        """Per-attribute classifier-free guidance in one batched forward pass.

        p = p(all) + sum_a w_a * (p(all but U_a) - p(negative of a, all but U_a)), p the prediction: each
        guided attribute is pushed toward its requested value, away from the prediction with a dropped,
        or, where ``negative`` (B, V) rows hold another value of a, with a at that value; both given every
        variable but those ``untie`` names for a (U_a; none by default).
        """
        names = [name for name, weight in guidance.items() if weight]
        if not names:
            return self.predict(sample, timesteps, conditions)
        everything = torch.ones_like(conditions, dtype=torch.bool)
        passes = [(conditions, everything)]  # (condition rows, what they keep) of each prediction
        directions = []  # per guided attribute: the passes of its two predictions
        for name in names:
            column = self.schema.names.index(name)
            given = everything.clone()
            for other in (untie or {}).get(name, ()):
                given[:, self.schema.names.index(other)] = False
            toward = 0 if given.all() else len(passes)
            if toward:
                passes.append((conditions, given))
            rows, keep = conditions.clone(), given.clone()
            if negative is not None:
                keep[:, column] &= negative[:, column] != conditions[:, column]
                rows[:, column] = negative[:, column]
            else:
                keep[:, column] = False
            directions.append((toward, len(passes)))
            passes.append((rows, keep))
        repeat = len(passes)
        predicted = self.predict(
            sample.repeat(repeat, 1, 1, 1),
            timesteps.repeat(repeat) if timesteps.ndim else timesteps,
            torch.cat([rows for rows, _ in passes]),
            torch.cat([keep for _, keep in passes]),
        ).reshape(repeat, *sample.shape)
        return predicted[0] + sum(
            guidance[name] * (predicted[toward] - predicted[away])
            for name, (toward, away) in zip(names, directions, strict=True)
        )

    def conditions(self, table: MetadataTable) -> torch.Tensor:
        """(N, V) float tensor of codes and values for the rows of a table, checked against the schema."""
        missing = [name for name in self.schema.names if name not in table.columns]
        if missing:
            raise CfgenError(
                f"{table.source} lacks column {missing[0]!r} that the generator was trained on; "
                f"the generator needs: {', '.join(self.schema.names)}"
            )
        encoded = self.schema.encode(table.columns)
        columns = [self.standardized(name, encoded[name]) for name in self.schema.names]
        return torch.from_numpy(np.stack(columns, axis=1).astype(np.float32))

    def condition_value(self, name: str, value: str) -> float:
        """What the encoder receives for one value of a variable: its code, or the standardised number."""
        variable = self.schema[name]
        if variable.is_discrete:
            return float(variable.code_of(value))
        return float(self.standardized(name, np.array([float(value)]))[0])

    def standardized(self, name: str, values: np.ndarray) -> np.ndarray:
        """Codes unchanged; continuous values as (value - centre) / scale, refused where that is not finite."""
        if name not in self.standardization:
            return values
        centre, scale = self.standardization[name]
        result = values / scale - centre / scale
        if not np.all(np.isfinite(result)) or np.abs(result).max() > np.finfo(np.float32).max:
            raise CfgenError(f"values of {name!r} lie too far from its training values to condition the generator")
        return result

    def record(self) -> dict:
        """What cfgen_generator.json holds: everything but the weights."""
        return {
            "schema": self.schema.to_dict(),
            "image_format": {"size": list(self.image_format.size), "mode": self.image_format.mode},
            "training": self.training,
            "inference": self.inference,
            "standardization": self.standardization,
            "ties": self.ties,
        }

    def save_record(self, folder: str | Path) -> None:
        """Write cfgen_generator.json; ``save_generator`` (pipeline.py) writes the whole folder."""
        (Path(folder) / CONFIG_FILE).write_text(json.dumps(self.record(), indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> "Generator":
        folder = Path(folder)
        if not (folder / CONFIG_FILE).is_file():
            raise CfgenError(f"{folder} is not a cfgen generator folder: it has no {CONFIG_FILE}")
        config = json.loads((folder / CONFIG_FILE).read_text())
        image_format = ImageFormat(tuple(config["image_format"]["size"]), config["image_format"]["mode"])
        return cls(
            UNet2DModel.from_pretrained(folder / "unet"),
            AttributeEncoder.from_pretrained(folder / "attribute_encoder"),
            # the training schedule; folders since the pipeline hold it as DDIM's configuration
            DDPMScheduler.from_config(DDPMScheduler.load_config(folder / "scheduler")),
            Schema.from_dict(config["schema"]),
            image_format,
            config["training"],
            config.get("inference", {}),
            config.get("standardization", {}),
            config.get("ties", {}),
        )


# Two discrete variables are tied in the training rows from this association on (bias-corrected
# Cramér's V; 0.3 is strong by the usual reading).
TIED_ASSOCIATION = 0.3


def variable_ties(schema: Schema, table: MetadataTable) -> dict[str, list[str]]:
    """Per discrete variable, the others tied to it (``TIED_ASSOCIATION``) in the training rows.
    Reweighting draws a tied pair's rare combinations more often, but from as few images: they stay what
    the model knows least, and an edit of a tied attribute asks for them."""
    codes = schema.encode(table.columns)
    names = [variable.name for variable in schema.variables if variable.is_discrete]
    ties: dict[str, list[str]] = {name: [] for name in names}
    for a, b in combinations(names, 2):
        table = contingency(codes[a], codes[b], schema[a].num_values, schema[b].num_values)
        if bergsma_v(*chi2_batch(table[None]))[0] >= TIED_ASSOCIATION:
            ties[a].append(b)
            ties[b].append(a)
    return ties
