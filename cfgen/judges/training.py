"""Training judges that do not share the shortcut they are meant to expose, and the one cache they
are kept in: a folder named by (or holding) everything they were trained from."""

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from cfgen.data.cells import cell_index, effective_sample_size, group_balanced_weights, pair_counts
from cfgen.data.tensors import to_model_range
from cfgen.errors import CfgenError
from cfgen.io import atomic_output_dir
from cfgen.judges.model import CONFIG_FILE, AttributeJudges

# Bump when the judges' training changes: cached judges are retrained, and the version is in their record.
JUDGES_VERSION = 4
# Degradations applied to half of each judge batch, so that judges read the soft predicted-clean
# images of mid-range timesteps as well as sharp ones: a Gaussian blur of up to 1/16 of the image
# side and Gaussian noise of up to 0.2 (images live in [-1, 1]).
BLUR_SIGMA_FRACTION = 1 / 16
NOISE_STD = 0.2


def confounding_log_priors(
    codes: np.ndarray, num_values: Sequence[int], weights: np.ndarray | None = None
) -> list[torch.Tensor]:
    """For each variable j, every row's log p(v_j | the other variables) as far as the pair counts tell.

    Naive Bayes over add-one smoothed counts, p(v_j) prod_k p(v_k | v_j), normalised over v_j: a
    (N, K_j) tensor per variable. It is what the confounding alone says about v_j, the expert a
    judge head is trained in a product with (``train_judges``). With ``weights`` the rows are
    counted as the draws that weight them see them (scaled to N rows, so the smoothing weighs the same).
    """
    if weights is not None:
        weights = weights * (len(codes) / weights.sum())
    priors = []
    for j, count in enumerate(num_values):
        marginal = np.bincount(codes[:, j], weights=weights, minlength=count) + 1.0
        log_prior = np.tile(np.log(marginal), (len(codes), 1))  # (N, K_j)
        for k, other in enumerate(num_values):
            if k != j:
                table = pair_counts(codes[:, j], codes[:, k], count, other, weights) + 1.0
                log_prior += np.log(table / table.sum(1, keepdims=True))[:, codes[:, k]].T
        priors.append(torch.log_softmax(torch.from_numpy(log_prior).float(), dim=1))
    return priors


def shift(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Move each image by up to 1/14 of its size in each direction, its edge pixels filling the gap."""
    count, _, height, width = images.shape
    reach = max(1, height // 14)
    offsets = torch.randint(-reach, reach + 1, (2, count, 1), generator=generator).to(images.device)
    padded = F.pad(images, (reach, reach, reach, reach), mode="replicate")
    rows = (torch.arange(height, device=images.device) + reach + offsets[0])[:, None, :, None]  # (N, 1, H, 1)
    columns = (torch.arange(width, device=images.device) + reach + offsets[1])[:, None, None, :]  # (N, 1, 1, W)
    index = torch.arange(count, device=images.device)[:, None, None, None]
    channel = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return padded[index, channel, rows, columns]


def degrade(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Blur and add noise to a random half of the images, each with its own strength."""
    count, channels, height, _ = images.shape
    rand = torch.rand(3, count, generator=generator).to(images.device)
    sigma = (rand[0] * BLUR_SIGMA_FRACTION * height).clamp_min(1e-3)
    radius = max(1, int(np.ceil(2 * BLUR_SIGMA_FRACTION * height)))
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-(offsets[None] ** 2) / (2 * sigma[:, None] ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(channels, 0)  # (count * channels, taps)
    flat = images.reshape(1, count * channels, *images.shape[2:])
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), kernel[:, None, None, :], groups=len(kernel))
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), kernel[:, None, :, None], groups=len(kernel))
    noise = torch.randn(images.shape, generator=generator).to(images.device) * NOISE_STD * rand[1, :, None, None, None]
    degraded = flat.reshape(images.shape) + noise
    chosen = (rand[2] < 0.5)[:, None, None, None]
    return torch.where(chosen, degraded, images)


def train_judges(
    images: np.ndarray,
    codes: np.ndarray,
    names: Sequence[str],
    num_values: Sequence[int],
    steps: int,
    batch_size: int,
    learning_rate: float = 1e-3,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
    convolutions: int = 1,
) -> tuple[AttributeJudges, dict]:
    """Train judges on uint8 (N, H, W, C) images and (N, V) discrete codes so that each head reads its own variable.

    Two defences against the confounding. Group-balanced sampling: every non-empty cell of the
    label and attribute values is drawn equally often. Product of experts: each head's logits are
    trained added to ``confounding_log_priors``, what the other variables already say about its
    variable, so that the shortcut earns a head nothing; the head is used alone. Balancing leaves
    a confounded variable predictive wherever cells are empty (at digit-colour association 0.99,
    colour still gives the digit in most balanced draws); the product takes the reward away. The
    expert is counted over the balanced draws, the rows the heads are trained on: counted over the
    raw rows it would claim the whole shortcut, and the heads would learn to undo its excess.
    Every image is shifted by a few pixels (``shift``) and half of each batch is blurred and noised
    (``degrade``); the learning rate decays to zero along a cosine.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    weights = group_balanced_weights(codes)
    judges = AttributeJudges(images.shape[-1], names, num_values, convolutions).to(device)
    optimizer = torch.optim.AdamW(judges.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    targets = torch.from_numpy(codes).to(device)
    priors = [prior.to(device) for prior in confounding_log_priors(codes, num_values, weights)]
    sampling = torch.from_numpy(weights)
    judges.train()
    losses = []
    for _ in tqdm(range(steps), desc="training judges", disable=not progress):
        rows = torch.multinomial(sampling, batch_size, replacement=True, generator=generator)
        batch = degrade(shift(to_model_range(images[rows.numpy()]).to(device), generator), generator)
        _, logits = judges(batch)
        on_device = rows.to(device)
        loss = torch.stack(
            [F.cross_entropy(head + priors[j][on_device], targets[on_device, j]) for j, head in enumerate(logits)]
        ).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    record = {
        "version": JUDGES_VERSION,
        "backbone": f"small-cnn, {judges.convolutions} convolutions per block",
        "sampling": "group-balanced (every non-empty cell of label and attribute values equally likely)",
        "product_of_experts": "log p(variable | other variables) in the group-balanced draws, naive Bayes over "
        "add-one smoothed pair counts",
        "cells": len(cell_index(codes)[1]),
        "effective_sample_size": effective_sample_size(weights),
        "steps": steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "schedule": "cosine decay to 0",
        "augmentation": "shifts of up to 1/14 of the size; blur and noise on half of each batch",
        "seed": seed,
        "final_loss": float(np.mean(losses[-20:])) if losses else None,
    }
    return judges.eval().requires_grad_(False), record


def load_or_train(
    folder: Path,
    key: dict,
    training_data: Callable[[], tuple[np.ndarray, np.ndarray, list[str], list[int]]],
    steps: int,
    batch_size: int,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
    convolutions: int = 1,
) -> tuple[AttributeJudges, dict]:
    """The judges in ``folder``, trained there first when absent, from ``training_data()``: (uint8
    images, (N, V) codes, names, numbers of values). ``key`` (with ``JUDGES_VERSION`` added) is saved
    with them; the folder appears whole or not at all, so concurrent users never read half a cache."""
    if not (folder / CONFIG_FILE).is_file():
        images, codes, names, num_values = training_data()
        judges, record = train_judges(images, codes, names, num_values, steps, batch_size, seed=seed, device=device,
                                      progress=progress, convolutions=convolutions)  # fmt: skip
        try:
            with atomic_output_dir(folder) as staging:
                judges.save(staging, {**record, "key": {**key, "version": JUDGES_VERSION}})
        except (OSError, CfgenError):
            if not (folder / CONFIG_FILE).is_file():  # unless another process cached the same judges first
                raise
    judges, saved = AttributeJudges.load(folder)
    return judges.to(device).requires_grad_(False), saved
