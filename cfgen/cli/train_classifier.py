"""``cfgen train-classifier`` / ``train_classifier.py``: flags, and a call into training.py.

Choices are checked by ``ClassifierConfig`` rather than by argparse, so an unknown method or
backbone is one ``error:`` line listing the valid ones (argparse would add a usage block).
"""

import argparse

from accelerate import PartialState

from cfgen.classifier.config import CF_DISTANCES, CF_LAYERS, METHOD_NAMES, ClassifierConfig, parse_seeds
from cfgen.classifier.evaluation import format_statistic
from cfgen.classifier.training import train_classifiers
from cfgen.cli.options import (
    add_format_argument,
    add_output_arguments,
    add_renamed,
    column_list,
    finish,
    kind_overrides,
)
from cfgen.runtime import MIXED_PRECISION_CHOICES, REPORT_TO_CHOICES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``cfgen train-classifier``."""
    defaults = ClassifierConfig(data="", method="erm", out="")
    parser.add_argument("--data", required=True, help="dataset folder (needs a split column with train rows)")
    parser.add_argument("--label", help="label column (default: the dataset card's)")
    parser.add_argument(
        "--spurious", type=column_list, default=(), help="spurious attribute(s) that define groups: A[,B]"
    )
    parser.add_argument(
        "--counterfactuals", nargs="+", default=(), metavar="CF", help="counterfactual folder(s) made from --data"
    )
    parser.add_argument("--method", required=True, help=f"one of: {', '.join(METHOD_NAMES)}")
    add_output_arguments(parser, "classifier folder")
    parser.add_argument(
        "--kinds", type=kind_overrides, default={}, help="override inferred kinds, e.g. age=categorical"
    )
    add_format_argument(parser)
    parser.add_argument("--resize", type=int, help="resize every image to NxN RGB")
    parser.add_argument("--backbone", default=defaults.backbone, help="small-cnn, resnet18 or resnet50")
    parser.add_argument("--backbone-weights", help="local ResNet weights (.pth or .safetensors); never downloaded")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="passes over the training rows")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="per process")
    parser.add_argument(
        "--learning-rate",
        dest="lr",
        type=float,
        default=defaults.lr,
        help=f"AdamW learning rate (default {defaults.lr})",
    )
    add_renamed(parser, "--lr", "--learning-rate", dest="lr", type=float)
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay, help="AdamW weight decay")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds, one model each (default 0)")
    parser.add_argument(
        "--mixed-precision",
        choices=MIXED_PRECISION_CHOICES,
        default=defaults.mixed_precision,
        help="auto (default): bf16 on CUDA GPUs with bf16 and CPUs with AMX, else no",
    )
    parser.add_argument(
        "--report-to",
        choices=REPORT_TO_CHOICES,
        default=defaults.report_to,
        help="where per-epoch figures are logged (default tensorboard, under OUT/logs; wandb runs offline "
        "unless you are logged in)",
    )
    parser.add_argument(
        "--min-group-size",
        type=int,
        default=defaults.min_group_size,
        help="smallest group that counts for worst-group accuracy and model selection",
    )
    parser.add_argument(
        "--pair-share",
        type=float,
        help="counterfactual methods: share of every batch drawn from training images that have a counterfactual "
        "(default: their share of the training set)",
    )
    parser.add_argument("--cf-weight", type=float, default=defaults.cf_weight, help="cf-reg: penalty weight")
    parser.add_argument("--cf-distance", default=defaults.cf_distance, help=f"cf-reg: {' or '.join(CF_DISTANCES)}")
    parser.add_argument("--cf-layer", default=defaults.cf_layer, help=f"cf-reg: {' or '.join(CF_LAYERS)}")
    parser.add_argument("--dro-step-size", type=float, default=defaults.dro_step_size, help="group-dro: weight step")
    parser.add_argument("--gs-weight", type=float, default=defaults.gs_weight, help="gradient-supervision: weight")
    parser.add_argument(
        "--contrastive-weight", type=float, default=defaults.contrastive_weight, help="cnc, cf-contrastive: weight"
    )
    parser.add_argument("--temperature", type=float, default=defaults.temperature, help="cnc, cf-contrastive")
    parser.add_argument("--cnc-erm-epochs", type=int, default=defaults.cnc_erm_epochs, help="cnc: ERM stage epochs")
    parser.add_argument(
        "--oracle-data", help="oracle: unconfounded training folder (default for built-in sets: re-rendered)"
    )


def config_from_args(args: argparse.Namespace) -> ClassifierConfig:
    """The configuration the flags describe (checked: bad values raise CfgenError)."""
    return ClassifierConfig(
        data=args.data,
        method=args.method,
        out=args.out,
        label=args.label,
        spurious=args.spurious,
        counterfactuals=tuple(args.counterfactuals),
        data_format=args.format,
        kinds=args.kinds,
        resize=args.resize,
        backbone=args.backbone,
        backbone_weights=args.backbone_weights,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        seeds=parse_seeds(args.seeds),
        mixed_precision=args.mixed_precision,
        report_to=args.report_to,
        min_group_size=args.min_group_size,
        pair_share=args.pair_share,
        cf_weight=args.cf_weight,
        cf_distance=args.cf_distance,
        cf_layer=args.cf_layer,
        dro_step_size=args.dro_step_size,
        gs_weight=args.gs_weight,
        contrastive_weight=args.contrastive_weight,
        temperature=args.temperature,
        cnc_erm_epochs=args.cnc_erm_epochs,
        oracle_data=args.oracle_data,
        overwrite=args.overwrite,
    )


def run(args: argparse.Namespace) -> None:
    """``cfgen train-classifier``: train, print the table."""
    metrics = train_classifiers(config_from_args(args))
    finish(PartialState(), f"{format_table(metrics)}\nwrote {args.out}")


def format_table(metrics: dict) -> str:
    """Accuracy and worst-group accuracy per evaluation split, mean ± std over seeds."""
    seeds = len(metrics["seeds"])
    lines = [f"{metrics['method']}, {seeds} seed(s)", f"{'split':<12} {'accuracy':>15}  {'worst group':>15}"]
    for name, split in metrics["splits"].items():
        accuracy, worst = (format_statistic(split[key]) for key in ("accuracy", "worst_group_accuracy"))
        lines.append(f"{name:<12} {accuracy:>15}  {worst:>15}")
    return "\n".join(lines)
