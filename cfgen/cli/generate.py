"""``cfgen generate``: write a counterfactual dataset with a trained generator or the exact renderer."""

import argparse

from cfgen.cli.options import add_format_argument, add_output_arguments, add_renamed, finish
from cfgen.counterfactuals.generation import generate_counterfactuals, process_state
from cfgen.generator.inference import (
    BEFORE_GUIDANCE,
    DEFAULT_GUIDANCE,
    DEFAULT_INVERSION_DEPTH,
    DEFAULT_NEGATIVE,
    DEFAULT_STEPS,
    DIRECTIONS,
    INVERSIONS,
    LOCALIZE,
    NEGATIVES,
)
from cfgen.runtime import MIXED_PRECISION_CHOICES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``generate`` options."""
    parser.add_argument("--generator", required=True, help="a trained generator folder, or 'exact' (built-in datasets)")
    parser.add_argument("--data", required=True, help="source dataset folder")
    add_format_argument(parser)
    parser.add_argument(
        "--intervene", required=True, help='e.g. "fg_color=green", "fg_color=*", "fg_color=random,thickness=thick"'
    )
    add_output_arguments(parser, "counterfactual dataset folder")
    parser.add_argument("--split", help="source rows: a split name or 'all' (default: all)")
    parser.add_argument("--limit", type=int, help="only the first N source images (of the split)")
    parser.add_argument("--seed", type=int, default=0, help="seed of 'random' interventions (default 0)")
    parser.add_argument("--batch-size", type=int, default=64, help="counterfactuals per batch and process (default 64)")
    parser.add_argument("--resize", type=int, help="resize source images to NxN RGB (the generator's size)")
    inference = parser.add_argument_group("trained generators (see docs/generator.md)")
    inference.add_argument(
        "--ddim-steps",
        dest="steps",
        type=int,
        help=f"steps each way (default: the generator's, chosen by tune-inference, else {DEFAULT_STEPS})",
    )
    add_renamed(inference, "--steps", "--ddim-steps", dest="steps", type=int)
    inference.add_argument(
        "--inversion-depth",
        type=float,
        help="fraction of the noise range inverted, in (0, 1] "
        f"(default: the generator's, chosen by tune-inference, else {DEFAULT_INVERSION_DEPTH})",
    )
    inference.add_argument(
        "--guidance",
        help="classifier-free guidance: one weight for every intervened attribute, or name=weight,... "
        f"(default: the generator's per attribute, chosen by tune-inference, else {DEFAULT_GUIDANCE:g})",
    )
    inference.add_argument(
        "--guidance-start",
        type=float,
        help="fraction of the decoding steps, noisiest first, made without guidance, in [0, 1): late guidance "
        "changes appearance and keeps more of the shape (default: the generator's per attribute, chosen by "
        "tune-inference, else 0)",
    )
    inference.add_argument(
        "--localize",
        choices=LOCALIZE,
        help="keep the source outside the model's own mask: of what the edit changes (edit), or of what "
        "the kept variables have no say in (others) (default: the generator's per attribute, chosen by "
        "tune-inference, else no)",
    )
    add_renamed(inference, "--no-localize", "--localize no", dest="localize", const="no")
    inference.add_argument(
        "--inversion",
        choices=INVERSIONS,
        help="ddpm: edit-friendly inversion, which carries more of the image into the edit; ddim: deterministic "
        "inversion (default: the generator's per attribute, chosen by tune-inference, else ddpm)",
    )
    inference.add_argument(
        "--negative",
        choices=NEGATIVES,
        help="what guidance pushes an edited attribute away from: the attribute dropped (dropped: classifier-free "
        "guidance) or its source value (source: the edit's own direction, which reaches further) (default: the "
        f"generator's per attribute, chosen by tune-inference, else {DEFAULT_NEGATIVE})",
    )
    inference.add_argument(
        "--direction",
        choices=DIRECTIONS,
        help="what guidance directions are conditioned on: every other variable (joint), or the variables not "
        "tied to the edited attribute in the training data (untied: never a rare pair of tied values) (default: "
        f"the generator's per attribute, chosen by tune-inference, else {DIRECTIONS[0]})",
    )
    inference.add_argument(
        "--before-guidance",
        choices=BEFORE_GUIDANCE,
        help="what the steps before --guidance-start are conditioned on: the target values (target), or what the "
        "edit keeps alone, its attributes dropped (dropped: the shape is kept and the guided steps set the value) "
        f"(default: the generator's per attribute, chosen by tune-inference, else {BEFORE_GUIDANCE[0]})",
    )
    inference.add_argument(
        "--mixed-precision",
        choices=MIXED_PRECISION_CHOICES,
        default="auto",
        help="auto: bf16 on CUDA GPUs with bf16 and CPUs with AMX, else no",
    )


def run(args: argparse.Namespace) -> None:
    """``cfgen generate``; under several processes, leave without torch's gloo teardown (environment.md)."""
    out = generate_counterfactuals(
        data=args.data,
        intervene=args.intervene,
        out=args.out,
        generator=args.generator,
        split=args.split,
        limit=args.limit,
        seed=args.seed,
        batch_size=args.batch_size,
        steps=args.steps,
        inversion_depth=args.inversion_depth,
        guidance=args.guidance,
        localize=args.localize,
        inversion=args.inversion,
        guidance_start=args.guidance_start,
        negative=args.negative,
        direction=args.direction,
        before_guidance=args.before_guidance,
        mixed_precision=args.mixed_precision,
        resize=args.resize,
        data_format=args.format,
        overwrite=args.overwrite,
    )
    finish(process_state(), f"wrote {out}")
