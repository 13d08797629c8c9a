"""``cfgen tune-inference``: choose a generator's inference settings on validation data."""

import argparse
from pathlib import Path

from cfgen.cli.options import add_format_argument, add_renamed
from cfgen.counterfactuals.tuning import (
    DEFAULT_SOURCES,
    DEPTHS,
    GUIDANCE,
    GUIDANCE_BEFORE,
    GUIDANCE_DIRECTIONS,
    GUIDANCE_NEGATIVES,
    GUIDANCE_STARTS,
    HOLDS,
    tune_inference,
)
from cfgen.generator.inference import (
    BEFORE_GUIDANCE,
    DEFAULT_STEPS,
    DIRECTIONS,
    INVERSIONS,
    LOCALIZE,
    NEGATIVES,
    SAVED_BEFORE,
)
from cfgen.generator.model import CONFIG_FILE
from cfgen.judges import (
    DEFAULT_JUDGE_BATCH_SIZE,
    DEFAULT_JUDGE_IMAGES,
    DEFAULT_JUDGE_STEPS,
    default_judge_cache,
)
from cfgen.runtime import MIXED_PRECISION_CHOICES


def _numbers(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``tune-inference`` options."""
    parser.add_argument("--generator", required=True, help="generator folder (its defaults are rewritten)")
    parser.add_argument("--data", required=True, help="dataset folder with a validation split")
    add_format_argument(parser)
    parser.add_argument("--resize", type=int, help="read the images as NxN RGB (data of mixed sizes)")
    parser.add_argument("--split", default="validation", help="rows to choose on (default validation; never test)")
    parser.add_argument("--attributes", type=lambda t: [p for p in t.split(",") if p], help="default: every one")
    parser.add_argument("--depths", type=_numbers, default=DEPTHS, help="inversion depths to try (default %(default)s)")
    parser.add_argument("--guidance", type=_numbers, default=GUIDANCE, help="guidance weights (default %(default)s)")
    parser.add_argument(
        "--guidance-starts",
        type=_numbers,
        default=GUIDANCE_STARTS,
        help="fractions of the decoding steps made without guidance, to try (see generate --guidance-start; "
        "default %(default)s)",
    )
    parser.add_argument(
        "--holds",
        type=_numbers,
        default=HOLDS,
        help="guidance weights toward the source values of every variable an edit keeps, tried at the best point "
        "of the rest of the grid (default: none)",
    )
    parser.add_argument(
        "--localize",
        type=_names,
        default=LOCALIZE,
        help=f"masks to try, comma-separated: {', '.join(LOCALIZE)} (see generate --localize; default: all)",
    )
    parser.add_argument(
        "--inversions",
        type=_names,
        default=INVERSIONS,
        help=f"inversions to try, comma-separated: {', '.join(INVERSIONS)} (default: both)",
    )
    parser.add_argument(
        "--negatives",
        type=_names,
        default=GUIDANCE_NEGATIVES,
        help=f"what guidance pushes away from, to try, comma-separated: {', '.join(NEGATIVES)} (see generate "
        f"--negative; default: {', '.join(GUIDANCE_NEGATIVES)})",
    )
    parser.add_argument(
        "--directions",
        type=_names,
        default=GUIDANCE_DIRECTIONS,
        help=f"guidance directions to try, comma-separated: {', '.join(DIRECTIONS)} (see generate --direction; "
        f"default: {', '.join(GUIDANCE_DIRECTIONS)})",
    )
    parser.add_argument(
        "--before-guidance",
        type=_names,
        default=GUIDANCE_BEFORE,
        help=f"what steps before a late --guidance-starts are conditioned on, to try, comma-separated: "
        f"{', '.join(BEFORE_GUIDANCE)} (see generate --before-guidance; default: {', '.join(GUIDANCE_BEFORE)})",
    )
    parser.add_argument(
        "--ddim-steps", dest="steps", type=int, default=DEFAULT_STEPS, help="DDIM steps each way (default %(default)s)"
    )
    add_renamed(parser, "--steps", "--ddim-steps", dest="steps", type=int)
    parser.add_argument("--sources", type=int, default=DEFAULT_SOURCES, help="images edited (default %(default)s)")
    parser.add_argument("--judge-steps", type=int, default=DEFAULT_JUDGE_STEPS, help="training steps of the judges")
    parser.add_argument("--judge-batch-size", type=int, default=DEFAULT_JUDGE_BATCH_SIZE, help="batch of the judges")
    parser.add_argument("--judge-images", type=int, default=DEFAULT_JUDGE_IMAGES, help="re-rendered (built-in only)")
    parser.add_argument("--judge-cache", help=f"where judges are kept (default {default_judge_cache()})")
    parser.add_argument(
        "--mixed-precision", choices=MIXED_PRECISION_CHOICES, default="auto", help="auto: bf16 where fast, else no"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the edits' targets and the judges")


def run(args: argparse.Namespace) -> None:
    inference = tune_inference(
        args.generator, args.data, args.split, args.attributes, args.depths, args.guidance,
        args.localize, args.steps, args.inversions, args.guidance_starts, args.holds, args.negatives,
        args.directions, args.before_guidance, args.sources, args.judge_steps, args.judge_batch_size,
        args.judge_images, args.judge_cache, args.mixed_precision, args.seed, progress=True, data_format=args.format,
        resize=args.resize,
    )  # fmt: skip
    for name, saved in inference["attributes"].items():
        settings = SAVED_BEFORE | saved  # attributes tuned before (kept in the record) may predate some choices
        before = f", before guidance {settings['before_guidance']}" if settings["guidance_start"] else ""
        print(f"{name}: {settings['inversion']} inversion to depth {settings['inversion_depth']}, "
              f"guidance {settings['guidance']} from {settings['guidance_start']} (negative "
              f"{settings['negative']}, direction {settings['direction']}{before}), holding the rest at "
              f"{settings['hold']}, {settings['steps']} steps, localize {settings['localize']}")  # fmt: skip
    print(f"wrote {Path(args.generator) / CONFIG_FILE}")
