"""The generator's training configuration: every option, the presets that fill them in, and which
options a resumed run may change."""

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from cfgen.errors import CfgenError
from cfgen.generator.deconfounding import (
    ConsistencySettings,
    parse_deconfound,
)
from cfgen.generator.model import ARCHITECTURES, PREDICTION_TYPES
from cfgen.runtime import (
    resolve_mixed_precision,
    resolve_report_to,
)

# Values a preset fills in; an explicit flag or keyword wins. quick: minutes on a 2-core CPU for
# colored MNIST (6,000 images of 28 px), at a learning rate that pays in few steps; standard: the
# quick model trained ten times longer at the rate that suits that length, for users without a GPU
# who want counterfactuals to use (quality rose steadily with training length, docs/generator.md);
# full: a GPU run; tiny: seconds, for tests. Predicting the velocity edits large regions far better
# (docs/generator.md); the quick main job's classifier learned more from a noise-predicting model.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "architecture": "tiny",
        "prediction_type": "v_prediction",
        "steps": 4,
        "batch_size": 8,
        "learning_rate": 1e-3,
        "warmup_steps": 0,
        "lr_schedule": "constant",
        "ema_decay": 0.9,
        "checkpoint_every": 2,
        "sample_every": 0,
        "log_every": 1,
        "judge_steps": 4,
        "judge_batch_size": 8,
    },
    "quick": {
        "architecture": "quick",
        "prediction_type": "epsilon",
        "steps": 400,
        "batch_size": 64,
        "learning_rate": 3e-3,
        "warmup_steps": 50,
        "lr_schedule": "constant",
        "ema_decay": 0.999,
        "checkpoint_every": 200,
        "sample_every": 200,
        "log_every": 10,
        "judge_steps": 200,
        "judge_batch_size": 128,
    },
    "standard": {
        "architecture": "quick",
        "prediction_type": "v_prediction",
        "steps": 4000,
        "batch_size": 64,
        "learning_rate": 1e-3,
        "warmup_steps": 50,
        "lr_schedule": "constant",
        "ema_decay": 0.999,
        "checkpoint_every": 500,
        "sample_every": 1000,
        "log_every": 10,
        "judge_steps": 1000,
        "judge_batch_size": 128,
    },
    "full": {
        "architecture": "full",
        "prediction_type": "v_prediction",
        "steps": 60_000,
        "batch_size": 128,
        "learning_rate": 2e-4,
        "warmup_steps": 1000,
        "lr_schedule": "constant",
        "ema_decay": 0.9999,
        "checkpoint_every": 5000,
        "sample_every": 5000,
        "log_every": 50,
        "judge_steps": 5000,
        "judge_batch_size": 256,
    },
}
# --lr-schedule choices, as diffusers' get_scheduler names them: constant after the warm-up (so a
# resumed run may raise --steps), or a cosine decay to zero at --steps.
LR_SCHEDULES = {"constant": "constant_with_warmup", "cosine": "cosine"}
# Settings that may differ when a run is resumed; everything else must match the stored configuration.
RESUMABLE_CHANGES = frozenset(
    {
        "out",
        "steps",
        "checkpoint_every",
        "keep_checkpoints",
        "sample_every",
        "log_every",
        "mixed_precision",
        "report_to",
        "resume",
        "overwrite",
    }
)


@dataclass
class TrainingConfig:
    """Everything a training run depends on; ``None`` means "the preset's value"."""

    data: str
    out: str
    label: str | None = None
    attributes: list[str] | None = None
    kinds: dict[str, str] = field(default_factory=dict)
    data_format: str = "auto"
    split: str | None = None  # default: train if the dataset has that split, else every row
    resize: int | None = None
    preset: str = "quick"
    architecture: str | None = None
    prediction_type: str | None = None  # what the UNet predicts: the noise or the velocity
    steps: int | None = None
    batch_size: int | None = None  # per process
    gradient_accumulation_steps: int = 1
    learning_rate: float | None = None
    warmup_steps: int | None = None
    lr_schedule: str | None = None
    ema_decay: float | None = None
    checkpoint_every: int | None = None  # 0: never
    keep_checkpoints: int = 2
    sample_every: int | None = None  # 0: never
    log_every: int | None = None
    judge_steps: int | None = None
    judge_batch_size: int | None = None
    deconfound: str | tuple[str, ...] = "none"
    condition_dropout: float = 0.1
    snr_gamma: float = 5.0  # 0: the plain squared error of the prediction
    timestep_bias_multiplier: float = 1.0  # 1: timesteps drawn uniformly
    timestep_bias_portion: float = 0.6  # the low-noise share of timesteps the multiplier favours
    reweight_clip: float = 20.0
    consistency: ConsistencySettings = field(default_factory=ConsistencySettings)
    init_from: str | None = None  # a trained generator whose weights the run starts from
    counterfactuals: str | None = None  # its edits of the training images, accepted ones trained on too
    mixed_precision: str = "auto"
    report_to: str = "tensorboard"
    seed: int = 0
    resume: bool = False
    overwrite: bool = False

    def resolved(self, stored: dict[str, Any] | None = None) -> "TrainingConfig":
        """The preset filled in, the choices parsed and every value checked. ``stored``, the configuration
        of a run being resumed with the same preset, fills in what is not given instead of the preset,
        so that the run goes on as it began even if the preset has changed since."""
        if self.preset not in PRESETS:
            raise CfgenError(f"unknown preset {self.preset!r}; valid: {', '.join(PRESETS)}")
        defaults = dict(PRESETS[self.preset])
        if stored is not None and stored.get("preset") == self.preset:
            defaults |= {name: stored[name] for name in defaults if name in stored}
        filled = {
            name: default if getattr(self, name) is None else getattr(self, name) for name, default in defaults.items()
        }
        config = replace(
            self,
            **filled,
            data=str(Path(self.data).resolve()),
            init_from=self.init_from and str(Path(self.init_from).resolve()),
            counterfactuals=self.counterfactuals and str(Path(self.counterfactuals).resolve()),
            out=str(self.out),
            deconfound=parse_deconfound(self.deconfound),
        )
        config._check()
        return config

    def _check(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise CfgenError(f"unknown architecture {self.architecture!r}; valid: {', '.join(ARCHITECTURES)}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise CfgenError(
                f"unknown --prediction-type {self.prediction_type!r}; valid: {', '.join(PREDICTION_TYPES)}"
            )
        minimums = {
            "steps": 1,
            "batch_size": 1,
            "gradient_accumulation_steps": 1,
            "warmup_steps": 0,
            "checkpoint_every": 0,
            "keep_checkpoints": 1,
            "sample_every": 0,
            "log_every": 1,
            "judge_steps": 1,
            "judge_batch_size": 1,
        }
        for name, minimum in minimums.items():
            if getattr(self, name) < minimum:
                raise CfgenError(f"--{name.replace('_', '-')} must be at least {minimum}, not {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise CfgenError(f"--learning-rate must be positive, not {self.learning_rate}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise CfgenError(f"unknown --lr-schedule {self.lr_schedule!r}; valid: {', '.join(LR_SCHEDULES)}")
        if not 0 <= self.ema_decay < 1:
            raise CfgenError(f"--ema-decay must be in [0, 1), not {self.ema_decay}")
        if not 0 <= self.condition_dropout < 1:
            raise CfgenError(f"--condition-dropout must be in [0, 1), not {self.condition_dropout}")
        if self.snr_gamma < 0:
            raise CfgenError(f"--snr-gamma must be >= 0 (0 turns the weighting off), not {self.snr_gamma}")
        if self.timestep_bias_multiplier <= 0:
            raise CfgenError(f"--timestep-bias-multiplier must be positive, not {self.timestep_bias_multiplier}")
        if not 0 < self.timestep_bias_portion <= 1:
            raise CfgenError(f"--timestep-bias-portion must be in (0, 1], not {self.timestep_bias_portion}")
        resolve_mixed_precision(self.mixed_precision)  # refuses unknown choices and fp16 without CUDA
        resolve_report_to(self.report_to)
        if self.resume and self.overwrite:
            raise CfgenError("--resume continues the run in --out and --overwrite replaces it; pass only one")

    def record(self) -> dict[str, Any]:
        """JSON-ready form, for training_config.json and run.json."""
        return json.loads(json.dumps(asdict(self)))
