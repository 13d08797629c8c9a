"""``cfgen train-generator``: train a counterfactual generator."""

import argparse
from dataclasses import fields

from accelerate import PartialState

from cfgen.cli.options import add_dataset_arguments, add_output_arguments, finish
from cfgen.generator.config import LR_SCHEDULES, PRESETS, TrainingConfig
from cfgen.generator.deconfounding import (
    CONSISTENCY_TERMS,
    ConsistencySettings,
)
from cfgen.generator.model import ARCHITECTURES, PREDICTION_TYPES
from cfgen.generator.training import train
from cfgen.runtime import (
    MIXED_PRECISION_CHOICES,
    REPORT_TO_CHOICES,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``train-generator`` options."""
    parser.add_argument("--data", required=True, help="dataset folder")
    add_output_arguments(parser, "generator folder")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    add_dataset_arguments(parser)
    parser.add_argument("--split", help="training rows: a split name or 'all' (default: train if present)")
    parser.add_argument("--resize", type=int, help="resize every image to NxN RGB")
    parser.add_argument("--init-from", help="a trained generator folder whose weights the run starts from")
    parser.add_argument(
        "--counterfactuals",
        help="self-training: a counterfactual folder of the training images (cfgen generate --split train); the "
        "edits the generator's judges accept join the training rows",
    )
    parser.add_argument(
        "--preset",
        choices=list(PRESETS),
        default="quick",
        help="tiny (tests), quick (CPU minutes), standard (ten times quick's training), full (GPU)",
    )

    preset = parser.add_argument_group("preset values (default: the preset's, docs/generator.md; given, they win)")
    preset.add_argument("--architecture", choices=list(ARCHITECTURES), help="UNet size")
    preset.add_argument(
        "--prediction-type", choices=list(PREDICTION_TYPES), help="what the UNet predicts: the noise or the velocity"
    )
    preset.add_argument("--steps", type=int, help="optimizer steps")
    preset.add_argument("--batch-size", type=int, help="images per process per step")
    preset.add_argument("--learning-rate", type=float, help="AdamW learning rate after warm-up")
    preset.add_argument("--warmup-steps", type=int, help="steps of linear learning-rate warm-up")
    preset.add_argument(
        "--lr-schedule", choices=list(LR_SCHEDULES), help="after warm-up: constant, or cosine decay to zero at --steps"
    )
    preset.add_argument("--ema-decay", type=float, help="largest EMA decay (reached with warmup)")
    preset.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (0: never)")
    preset.add_argument("--sample-every", type=int, help="steps between preview grids (0: never)")
    preset.add_argument("--log-every", type=int, help="steps between logged losses")
    preset.add_argument("--judge-steps", type=int, help="training steps of the judges (consistency, self-training)")
    preset.add_argument("--judge-batch-size", type=int, help="batch of the judges (consistency, self-training)")

    parser.add_argument("--gradient-accumulation-steps", type=int, default=1, help="batches per optimizer step")
    parser.add_argument("--keep-checkpoints", type=int, default=2, help="latest checkpoints kept (default 2)")
    parser.add_argument("--condition-dropout", type=float, default=0.1, help="per-variable dropout (default 0.1)")
    parser.add_argument(
        "--snr-gamma", type=float, default=5.0, help="min-SNR loss weighting gamma (default 5; 0: plain squared error)"
    )
    parser.add_argument(
        "--timestep-bias-multiplier",
        type=float,
        default=1.0,
        help="how much likelier the low-noise timesteps edits visit are drawn in training (default 1: uniform)",
    )
    parser.add_argument(
        "--timestep-bias-portion",
        type=float,
        default=0.6,
        help="the share of timesteps, from the least noisy, that the multiplier favours (default 0.6)",
    )
    parser.add_argument(
        "--mixed-precision",
        choices=MIXED_PRECISION_CHOICES,
        default="auto",
        help="auto: bf16 on CUDA GPUs with bf16 and CPUs with AMX, else no",
    )
    parser.add_argument(
        "--report-to",
        choices=REPORT_TO_CHOICES,
        default="tensorboard",
        help="where losses and preview grids are logged (default tensorboard, under OUT/logs; wandb runs offline "
        "unless you are logged in)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, batches and noise")

    debias = parser.add_argument_group("deconfounding (see docs/generator.md)")
    debias.add_argument("--deconfound", default="none", help="none, or reweight and/or consistency (comma-separated)")
    debias.add_argument("--reweight-clip", type=float, default=20.0, help="largest sampling weight (default 20)")
    defaults = ConsistencySettings()
    debias.add_argument(
        "--edit-fraction",
        type=float,
        default=defaults.edit_fraction,
        help=f"share of each batch edited (default {defaults.edit_fraction})",
    )
    for term in CONSISTENCY_TERMS:
        weight = getattr(defaults, f"{term}_weight")
        debias.add_argument(f"--{term}-weight", type=float, default=weight, help=f"default {weight}")
    debias.add_argument(
        "--consistency-min-timestep",
        dest="min_timestep",
        type=int,
        default=defaults.min_timestep,
        help=f"edited images are noised to t in [min, max) (default {defaults.min_timestep})",
    )
    debias.add_argument(
        "--consistency-max-timestep",
        dest="max_timestep",
        type=int,
        default=defaults.max_timestep,
        help=f"default {defaults.max_timestep}",
    )


def config_from_args(args: argparse.Namespace) -> TrainingConfig:
    """The configuration the parsed ``train-generator`` options describe."""
    consistency = ConsistencySettings(**{f.name: getattr(args, f.name) for f in fields(ConsistencySettings)})
    given = {f.name: getattr(args, f.name) for f in fields(TrainingConfig) if f.name in vars(args)}
    return TrainingConfig(**{**given, "data_format": args.format, "consistency": consistency})


def run(args: argparse.Namespace) -> None:
    """``cfgen train-generator``."""
    out = train(config_from_args(args))
    finish(PartialState(), f"wrote {out}")
