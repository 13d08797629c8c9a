"""Speed of one generator training step on this machine, as a ratio to a plain diffusers loop.

The reference is the loop of diffusers' unconditional training example on the same UNet: noise,
``add_noise``, forward, MSE, backward, AdamW, nothing else. Against it, in the same process and so
on the same host: cfgen's own training step (``training_loss`` through the Denoiser with the
attribute encoder, per-variable condition dropout and min-SNR weighting, gradient clipping, the LR
schedule and EMA), and variants of it that may make it cheaper:

    channels_last     the UNet and the batch in NHWC memory layout (oneDNN's preferred on CPU)
    bf16              bf16 autocast, as accelerate applies it (fast only where the CPU has AMX)

Each variant is timed as the median of ``--steps`` steps after ``--warmup`` steps; the variants run
interleaved, round-robin, so that a change of the host's speed during the run hits all alike.

    python benchmarks/bench_training_step.py [--architecture quick] [--batch-size 64] [--steps 20]

Writes benchmarks/results/training-step.json.
"""

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import DIGITS, machine
from diffusers import DDPMScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from cfgen.data.schema import Attribute, Schema
from cfgen.generator.model import ARCHITECTURES, Generator, build_unet
from cfgen.generator.training import MAX_GRAD_NORM, Denoiser, training_loss
from cfgen.io import write_json

RESULT = Path(__file__).resolve().parent / "results" / "training-step.json"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", choices=list(ARCHITECTURES), default="quick")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--variants", default="plain,cfgen,cfgen+channels_last,cfgen+bf16")
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args()


def digits_schema() -> Schema:
    """The built-in digits' variables: label and three attributes, 10, 10, 4 and 3 values."""
    label, *attributes = (
        Attribute(name, "categorical", tuple(map(str, range(count))))
        for name, count in {"digit": 10, "fg_color": 10, "bg_color": 4, "thickness": 3}.items()
    )
    return Schema(label, tuple(attributes))


def plain_step(architecture: str, batch_size: int) -> Callable[[], None]:
    """diffusers' unconditional example: the reference a step is measured against."""
    unet = build_unet(DIGITS, architecture)
    unet.config.class_embed_type = None
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    images = torch.randn(batch_size, 3, *DIGITS.size)
    embedding = torch.zeros(batch_size, unet.config.block_out_channels[0] * 4)  # identity class embedding

    def step() -> None:
        noise = torch.randn_like(images)
        timesteps = torch.randint(0, 1000, (batch_size,))
        prediction = unet(scheduler.add_noise(images, noise, timesteps), timesteps, class_labels=embedding).sample
        F.mse_loss(prediction, noise).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def cfgen_step(architecture: str, batch_size: int, bf16: bool, channels_last: bool) -> Callable[[], None]:
    """cfgen's training step as ``train`` runs it in one process, on random digits and conditions
    (accelerate adds nothing there but the autocast, written out here so that variants of different
    precisions can take turns)."""
    generator = Generator.create(digits_schema(), DIGITS, architecture)
    model = Denoiser(generator)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    lr_scheduler = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=50)
    ema = EMAModel(model.parameters(), decay=0.999, use_ema_warmup=True, power=3 / 4)
    rng = np.random.default_rng(0)
    images = torch.randn(batch_size, 3, *DIGITS.size)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    conditions = torch.from_numpy(rng.integers(0, 3, (batch_size, 4)).astype(np.float32))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = training_loss(model, generator.scheduler, images, conditions, 0.1, 5.0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(model.parameters())

    return step


def build(variant: str, architecture: str, batch_size: int) -> Callable[[], None]:
    if variant == "plain":
        return plain_step(architecture, batch_size)
    parts = variant.split("+")
    return cfgen_step(architecture, batch_size, "bf16" in parts, "channels_last" in parts)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    variants = args.variants.split(",")
    steps = {variant: build(variant, args.architecture, args.batch_size) for variant in variants}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    times: dict[str, list[float]] = {variant: [] for variant in variants}
    for _ in range(args.steps):
        for variant, step in steps.items():
            started = time.perf_counter()
            step()
            times[variant].append(time.perf_counter() - started)
    median = {variant: statistics.median(values) for variant, values in times.items()}
    result = {
        "benchmark": "training-step",
        "machine": machine(),
        "amx": torch.cpu._is_amx_tile_supported(),
        "settings": vars(args),
        "median_seconds": median,
        "ratio_to_plain": {v: median[v] / median["plain"] for v in variants} if "plain" in median else None,
    }
    write_json(RESULT, result)
    for variant in variants:
        ratio = f"  {result['ratio_to_plain'][variant]:.2f}x plain" if result["ratio_to_plain"] else ""
        print(f"{variant:>28}: {median[variant]:.3f} s/step{ratio}")


if __name__ == "__main__":
    main()
