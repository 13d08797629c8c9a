"""Accelerate set-up shared by every stage: which mixed precision ``auto`` stands for, and an
``Accelerator`` that each stage of one process may create with its own precision.
"""

import importlib.util
import os

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from cfgen.errors import CfgenError

MIXED_PRECISION_CHOICES = ("auto", "no", "fp16", "bf16")
# What ``auto`` resolves to when set (no, fp16 or bf16); the test suite uses it to train in bf16 on any host.
AUTO_PRECISION_VARIABLE = "CFGEN_AUTO_MIXED_PRECISION"


def fastest_precision() -> str:
    """bf16 where it is fast (a CUDA GPU with bf16, or a CPU with AMX tiles), else no mixed precision."""
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16" if torch.cpu._is_amx_tile_supported() else "no"


def resolve_mixed_precision(choice: str) -> str:
    """The precision a run uses: ``choice``, with ``auto`` replaced by the host's fastest (or by
    ``$CFGEN_AUTO_MIXED_PRECISION``), checked against what the host can do."""
    if choice not in MIXED_PRECISION_CHOICES:
        raise CfgenError(f"unknown mixed precision {choice!r}; valid: {', '.join(MIXED_PRECISION_CHOICES)}")
    if choice == "auto":
        choice = os.environ.get(AUTO_PRECISION_VARIABLE) or fastest_precision()
        fixed = MIXED_PRECISION_CHOICES[1:]
        if choice not in fixed:
            raise CfgenError(f"{AUTO_PRECISION_VARIABLE}={choice!r} is not a precision; valid: {', '.join(fixed)}")
    if choice == "fp16" and not torch.cuda.is_available():
        raise CfgenError("--mixed-precision fp16 needs a CUDA GPU; use bf16 or no")
    return choice


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision (None: full precision)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def make_accelerator(mixed_precision: str, **options) -> Accelerator:
    """An ``Accelerator`` in ``mixed_precision`` (resolved as ``resolve_mixed_precision`` does).

    accelerate keeps one state per process and refuses an Accelerator of another precision once
    that state exists. A stage that follows another in the same process (the pipeline, a notebook
    that trains a classifier and then a generator) therefore starts that state afresh; the process
    group, held apart from it, is kept.
    """
    precision = resolve_mixed_precision(mixed_precision)
    if AcceleratorState._shared_state.get("_mixed_precision", precision) != precision:
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision=precision, **options)


def stop_if_diverged(accelerator: Accelerator, gradient_norm: torch.Tensor, step: int, learning_rate: float) -> None:
    """Stop a run whose loss or gradients stopped being finite numbers, rather than save NaN weights.

    The norm is taken over the gradients after accelerate has averaged them, so every process sees
    the same value and all of them stop together. fp16's loss scaler skips such steps by design.
    """
    if accelerator.scaler is None and not torch.isfinite(gradient_norm):
        raise CfgenError(
            f"training diverged at step {step}: the loss or its gradients are not finite numbers; "
            f"lower the learning rate (now {learning_rate:g}) or check the data's values"
        )


REPORT_TO_CHOICES = ("tensorboard", "wandb", "none")


def resolve_report_to(choice: str) -> str | None:
    """The accelerate tracker a training run logs to, checked; wandb runs offline unless the user set it up."""
    if choice not in REPORT_TO_CHOICES:
        raise CfgenError(f"unknown --report-to {choice!r}; valid: {', '.join(REPORT_TO_CHOICES)}")
    if choice == "none":
        return None
    if importlib.util.find_spec(choice) is None:
        raise CfgenError(f"--report-to {choice} needs the {choice} package: pip install {choice}")
    if choice == "wandb" and "WANDB_API_KEY" not in os.environ:
        os.environ.setdefault("WANDB_MODE", "offline")  # no network unless the user logged in
    return choice


def log_image(accelerator: Accelerator, name: str, image: np.ndarray, step: int) -> None:
    """Log one (H, W, C) uint8 image to every tracker that takes images."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({name: image[None]}, step=step, dataformats="NHWC")
        elif tracker.name == "wandb":
            tracker.log_images({name: [image]}, step=step)
