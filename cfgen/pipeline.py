"""Every stage in one run folder, and one report of them all (``cfgen pipeline``).

    RUN/data/                  the built-in default dataset (unless --data names yours)
    RUN/confounding/           the meter on the training split
    RUN/generator/             the counterfactual generator (diffusers format), with the inference
                               settings chosen for each edited attribute on the validation split
    RUN/counterfactuals/       generated counterfactuals of training images, spurious attributes edited
    RUN/exact/                 built-in data only: the true counterfactuals of the same edits
    RUN/counterfactual_quality.json   built-in data only: effectiveness, preservation, error to exact
    RUN/confounding_after/     the meter on original + counterfactuals, compared with before
    RUN/classifiers/<method>/  one classifier folder per method
    RUN/report.md              tables and figures of all of the above
    RUN/metrics.json           every method's figures, the confounding scores, the counterfactual scores

The pipeline runs in one process; for several GPUs run the stages themselves under
``accelerate launch`` (README).
"""

import itertools
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cfgen.classifier.config import ClassifierConfig
from cfgen.classifier.evaluation import format_statistic
from cfgen.classifier.training import train_classifiers
from cfgen.confounding.folders import measure_folders
from cfgen.counterfactuals.generation import EXACT, generate_counterfactuals, write_example_grid
from cfgen.counterfactuals.metrics import evaluate_counterfactuals
from cfgen.counterfactuals.tuning import DEPTHS, GUIDANCE, tune_inference
from cfgen.data.adapters import open_dataset
from cfgen.data.table import SPLIT_COLUMN
from cfgen.datasets import DEFAULT, BuiltinDataset, builtin_of
from cfgen.errors import CfgenError
from cfgen.generator.inference import (
    BEFORE_GUIDANCE,
    DIRECTIONS,
    INVERSIONS,
    LOCALIZE,
    NEGATIVES,
    SAVED_BEFORE,
    saved_localize,
)
from cfgen.generator.model import CONFIG_FILE
from cfgen.generator.training import train_generator
from cfgen.io import RUN_FILE, check_output_dir, output_dir_in_place, write_json, write_run_record
from cfgen.runtime import resolve_mixed_precision

# What each preset does beyond the generator's own preset of the same name.
# tiny: seconds, for tests; quick: at most 10 minutes on a 2-core CPU; standard: the generator
# trained ten times longer and a third of the training images edited (about an hour on a 2-core
# CPU); full: a GPU.
# generator_steps (None: the generator preset's), sources (training images edited) and ddim_steps
# (each way) are the time budget's levers: on the quick model 10 DDIM steps edit as well as 20 at
# half the time (docs/generator.md). tune: the validation images and the grid (depths, guidance,
# guidance starts, masks, inversions, negatives, directions, conditions before guidance) that choose
# each edited attribute's inference settings (cfgen tune-inference); quick and standard invert to
# 0.6 of the noise range alone (a model predicting the velocity edits a background from there too,
# and deeper inversions lost digits), every preset but full tries the edit-friendly inversion alone
# (it measured better on every attribute), only standard and full try guidance from 60% of the
# steps (it pays on a well-trained model), quick guides away from the source value, the others away
# from the attribute dropped (each measured better on its model: docs/generator.md; tiny tries
# both), standard guides given what is untied to the attribute (it reached more targets at equal
# guidance, with as many digits kept), quick given every variable (its main job learned less from
# the other), standard drops the edited attribute from the steps before a late guidance start (more
# digits and thicknesses kept, closer to the exact edits), full lets the tuner choose those two (tiny
# the direction: it guides from the first step), and only tiny, standard and full then try holding
# what the edit keeps at the grid's best point, to stay within the budget: each decoding of the grid
# is time.
# soundness_images: edits whose composition and reversibility are measured (each up to 11 times).
# cf_weight: cf-reg's pull between an image and its edit; quick's few, incomplete edits teach more
# under a stronger pull, which costs where every image has a good edit (docs/classifier.md).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "deconfound": "reweight",
        "generator_steps": None,
        "sources": 16,
        "ddim_steps": 4,
        "judge_steps": 20,
        "epochs": 1,
        "cf_weight": 30.0,
        "seeds": (0,),
        "sizes": {"train": 160, "validation": 40, "test": 60, "test_anti": 40},
        "tune": {
            "sources": 8,
            "depths": (1.0,),
            "guidance": (3.0,),
            "guidance_starts": (0.0,),
            "holds": (1.0,),
            "localize": LOCALIZE,
            "inversions": ("ddpm",),
            "negatives": NEGATIVES,
            "directions": DIRECTIONS,
            "before_guidance": BEFORE_GUIDANCE,
        },
        "soundness_images": 4,
    },
    "quick": {
        "deconfound": "reweight",
        "generator_steps": 450,
        "sources": 400,
        "ddim_steps": 10,
        "judge_steps": 300,
        "epochs": 3,
        "cf_weight": 30.0,
        "seeds": (0,),
        "sizes": None,
        "tune": {
            "sources": 64,
            "depths": (0.6,),
            "guidance": (2.0, 3.0, 5.0),
            "guidance_starts": (0.0,),
            "holds": (),
            "localize": LOCALIZE,
            "inversions": ("ddpm",),
            "negatives": ("source",),
            "directions": ("joint",),
            "before_guidance": ("target",),
        },
        "soundness_images": 32,
    },
    "standard": {
        "deconfound": "reweight",
        "generator_steps": None,
        "sources": 2000,
        "ddim_steps": 20,
        "judge_steps": 2000,
        "epochs": 6,
        "cf_weight": 10.0,
        "seeds": (0,),
        "sizes": None,
        "tune": {
            "sources": 100,
            "depths": (0.6,),
            "guidance": (2.0, 3.0, 5.0),
            "guidance_starts": (0.0, 0.6),
            "holds": (1.0,),
            "localize": LOCALIZE,
            "inversions": ("ddpm",),
            "negatives": ("dropped",),
            "directions": ("untied",),
            "before_guidance": ("dropped",),
        },
        "soundness_images": 64,
    },
    "full": {
        "deconfound": "reweight,consistency",
        "generator_steps": None,
        "sources": None,
        "ddim_steps": 50,
        "judge_steps": 600,
        "epochs": 20,
        "cf_weight": 10.0,
        "seeds": (0, 1, 2),
        "sizes": None,
        "tune": {
            "sources": 500,
            "depths": DEPTHS,
            "guidance": GUIDANCE,
            "guidance_starts": (0.0, 0.6),
            "holds": (1.0, 2.0),
            "localize": LOCALIZE,
            "inversions": INVERSIONS,
            "negatives": ("dropped",),
            "directions": DIRECTIONS,
            "before_guidance": BEFORE_GUIDANCE,
        },
        "soundness_images": 256,
    },
}
# When only some training images have a counterfactual (the quick preset edits 400 of 6,000), half of
# every classifier batch is drawn from those that do; uniform batches would hold one or two pairs.
PAIR_SHARE = 0.5
# How the report names each --localize choice.
LOCALIZED = {
    "no": "plain edits",
    "edit": "edits inside the edit's mask",
    "others": "edits outside the kept variables' mask",
}
# How the report names each --negative choice.
AWAY_FROM = {"dropped": "away from the attribute dropped", "source": "away from the source value"}
# How the report names each --direction choice.
GIVEN = {"joint": "", "untied": " given what is not tied to it"}
DEFAULT_METHODS = ("erm", "cf-reg")


def run_pipeline(
    out: str | Path,
    *,
    data: str | Path | None = None,
    label: str | None = None,
    attributes: Sequence[str] | None = None,
    spurious: Sequence[str] | None = None,
    methods: Sequence[str] = DEFAULT_METHODS,
    preset: str = "quick",
    strength: float = 0.99,
    seed: int = 0,
    mixed_precision: str = "auto",
    resize: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Run every stage into ``out``; nothing is left behind if a stage fails. ``resize`` (a side in
    pixels) makes every stage read the images as that square in RGB, for data of mixed sizes."""
    out = Path(out)
    check_output_dir(out, overwrite)
    resolve_mixed_precision(mixed_precision)  # refuses a bad choice before any stage runs
    settings = PRESETS[preset]
    if data is not None:
        schema = open_dataset(data).schema(label, attributes)
        label, attributes = schema.label.name, [a.name for a in schema.attributes]
        spurious = list(spurious or attributes)
        unknown = [name for name in spurious if name not in attributes]
        if unknown:
            raise CfgenError(f"--spurious {unknown[0]!r} is not an attribute; valid: {', '.join(attributes)}")
    else:
        spurious = list(spurious or DEFAULT.spurious)
    intervention = ",".join(f"{name}=random" for name in spurious)
    timings: dict[str, float] = {}

    def stage(name: str, message: str) -> None:
        timings[name] = time.perf_counter()
        print(f"\n== {message}", flush=True)

    with output_dir_in_place(out, overwrite) as run_dir:
        if data is None:
            stage("dataset", f"building the default dataset ({DEFAULT.name}, its ties at strength {strength})")
            data = DEFAULT.build(run_dir / "data", strength, settings["sizes"], seed)
        table = open_dataset(data)
        builtin = builtin_of(table)
        stage("measure", "measuring confounding on the training split")
        before = measure_folders([data], run_dir / "confounding", label=label, attributes=attributes, seed=seed)
        stage("generator", f"training the generator ({preset} preset, deconfound {settings['deconfound']})")
        generator = train_generator(
            data,
            run_dir / "generator",
            label=label,
            attributes=attributes,
            preset=preset,
            deconfound=settings["deconfound"],
            steps=settings["generator_steps"],
            seed=seed,
            mixed_precision=mixed_precision,
            resize=resize,
        )
        inference = None
        if SPLIT_COLUMN in table.columns and "validation" in set(table.column(SPLIT_COLUMN)):
            stage("tune", "choosing each edited attribute's inference settings on the validation split")
            inference = tune_inference(
                generator, data, attributes=spurious, steps=settings["ddim_steps"], judge_steps=settings["judge_steps"],
                mixed_precision=mixed_precision, seed=seed, resize=resize, **settings["tune"],
            )  # fmt: skip
        stage("generate", f"generating counterfactuals: {intervention} on training images")
        common = {"split": "train", "seed": seed, "limit": settings["sources"], "resize": resize}
        counterfactuals = generate_counterfactuals(
            data,
            intervention,
            run_dir / "counterfactuals",
            generator=generator,
            steps=settings["ddim_steps"],
            mixed_precision=mixed_precision,
            **common,
        )
        if builtin is not None:
            stage("quality", "scoring the counterfactuals with judges and against the exact ones")
            exact = generate_counterfactuals(data, intervention, run_dir / "exact", generator=EXACT, **common)
        else:
            stage("quality", "scoring the counterfactuals with judges trained on the data")
            exact = None
        quality = evaluate_counterfactuals(
            counterfactuals, data, exact, label, attributes, judge_steps=settings["judge_steps"], seed=seed,
            soundness_images=settings["soundness_images"], resize=resize,
        )  # fmt: skip
        write_json(run_dir / "counterfactual_quality.json", quality)
        write_example_grid(counterfactuals, table, exact=exact, out=run_dir / "examples.png")
        stage("remeasure", "measuring original + counterfactuals against the original")
        after = measure_folders(
            [data, counterfactuals],
            run_dir / "confounding_after",
            label=label,
            attributes=attributes,
            reference=[data],
            seed=seed,
        )
        classifiers = {}
        for method in methods:
            stage(f"classifier {method}", f"training the {method} classifier")
            config = ClassifierConfig(
                data=str(data),
                method=method,
                out=str(run_dir / "classifiers" / method),
                label=label,
                spurious=tuple(spurious),
                counterfactuals=(str(counterfactuals),),
                epochs=settings["epochs"],
                cf_weight=settings["cf_weight"],
                seeds=settings["seeds"],
                pair_share=PAIR_SHARE,
                mixed_precision=mixed_precision,
                resize=resize,
            )
            classifiers[method] = train_classifiers(config)
        timings["end"] = time.perf_counter()
        seconds = _durations(timings)
        precision = {
            "generator": json.loads((generator / CONFIG_FILE).read_text())["training"]["mixed_precision"],
            "generation": json.loads((counterfactuals / RUN_FILE).read_text())["mixed_precision"],
            **{f"classifier {method}": metrics["mixed_precision"] for method, metrics in classifiers.items()},
        }
        summary = _summary(before, after, quality, classifiers, seconds, precision)
        summary["inference"] = inference and inference["attributes"]
        write_json(run_dir / "metrics.json", summary)
        (run_dir / "report.md").write_text(_report(summary, before, intervention, preset, builtin))
        record = {
            "preset": preset,
            "data": str(data),
            "spurious": spurious,
            **settings,
            "pair_share": PAIR_SHARE,
            "mixed_precision": mixed_precision,
        }
        write_run_record(run_dir, record, seed, resolve_mixed_precision(mixed_precision))
    return out


def _durations(marks: dict[str, float]) -> dict[str, float]:
    names = list(marks)
    return {name: round(marks[after] - marks[name], 1) for name, after in itertools.pairwise(names)}


def _summary(
    before: dict,
    after: dict,
    quality: dict | None,
    classifiers: dict[str, dict],
    seconds: dict[str, float],
    precision: dict[str, str],
) -> dict[str, Any]:
    def split_figures(metrics: dict) -> dict[str, Any]:
        return {
            split: {"accuracy": figures["accuracy"], "worst_group_accuracy": figures["worst_group_accuracy"]}
            for split, figures in metrics["splits"].items()
        }

    return {
        "confounding": {"before": before["score"], "after": after["score"]},
        "attribute_scores": {"before": before["attribute_scores"], "after": after["attribute_scores"]},
        "counterfactual_quality": quality,
        "classifiers": {method: split_figures(metrics) for method, metrics in classifiers.items()},
        "seconds": seconds,
        "mixed_precision": precision,
    }


def _report(summary: dict, before: dict, intervention: str, preset: str, builtin: BuiltinDataset | None) -> str:
    label = before["label"]
    scores = summary["attribute_scores"]
    lines = [
        "# cfgen run",
        "",
        f"Preset `{preset}`; data `{before['data'][0]}`; label `{label}`; counterfactuals `{intervention}` "
        "of training images.",
        "",
        "## 1. Confounding of the training split, before and after adding counterfactuals",
        "",
        "| attribute | score before (partner) | score after (partner) |",
        "|---|---|---|",
        *(
            f"| {name} | {scores['before'][name]['score']:.3f} ({scores['before'][name]['partner']}) "
            f"| {scores['after'][name]['score']:.3f} ({scores['after'][name]['partner']}) |"
            for name in before["attributes"]
        ),
        "",
        f"Dataset score {summary['confounding']['before']:.3f} before, {summary['confounding']['after']:.3f} after; "
        f"{len(before['unsupported'])} empty label x attribute groups before. Heatmaps: "
        "`confounding/confounding.png`, `confounding_after/confounding.png` (before, after, change).",
        "",
        "![before and after](confounding_after/confounding.png)",
        "",
        "## 2. Counterfactuals",
        "",
        "![examples](examples.png)",
        "",
        *_inference_lines(summary["inference"]),
    ]
    quality = summary["counterfactual_quality"]
    exact = builtin is not None and quality["exact"] is not None
    columns = _attribute_columns(quality["all"])
    shape = builtin.shape_metrics.items() if builtin is not None else ()
    errors = [("MSE to exact", "mse_to_exact", 4), *((name, key, 3) for key, name in shape)]
    lines += [
        "Effectiveness (the edit happened), preservation (the label and other attributes kept)"
        + (" and pixel error against the exact counterfactuals" if exact else ", read by judges trained on the data")
        + " (`counterfactual_quality.json`; rare/absent: target pairs rare or never seen in training):",
        "",
        "| | effectiveness | preservation | success | "
        + "".join(f"{name} | " for name, _, _ in (errors if exact else []))
        + "realism (Frechet) |",
        "|---|---|---|---|" + "---|" * (len(errors) if exact else 0) + "---|",
        *(
            f"| {name} | {_number(part['effectiveness']['all'])} | {_number(part['preservation']['all'])} "
            f"| {_number(part['success'])} | "
            + "".join(f"{_number(part.get(key), digits)} | " for _, key, digits in (errors if exact else []))
            + f"{_number(part.get('realism_frechet'), 2)} |"
            for name, part in _quality_rows(quality)
        ),
        "",
        *_soundness_lines(quality),
        "Per attribute (all edits): how often the edited attribute reached its target, and how often each "
        "other variable kept its value:",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        "| " + " | ".join(_attribute_cell(quality["all"], name) for name in columns) + " |",
        "",
        "The judges read the source images' "
        + ", ".join(f"{name} at {value:.3f}" for name, value in quality["judge_accuracy_on_sources"].items())
        + ": preservation cannot be read more precisely than that."
        + (" The shape errors compare the edits with the exact counterfactuals without any judge." if exact else ""),
        "",
    ]
    lines += [
        "## 3. Classifiers",
        "",
        "| method | " + " | ".join(f"{split} accuracy | {split} worst group" for split in _splits(summary)) + " |",
        "|---|" + "---|---|" * len(_splits(summary)),
    ]
    for method, splits in summary["classifiers"].items():
        cells = [
            f"{format_statistic(splits[s]['accuracy'])} | {format_statistic(splits[s]['worst_group_accuracy'])}"
            for s in _splits(summary)
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += [
        "",
        *([builtin.splits_note] if builtin is not None else []),
        *_pairing_note(PRESETS[preset]["sources"]),
        *_pull_note(PRESETS[preset]["cf_weight"], summary["classifiers"]),
        "",
        "## Time per stage (s)",
        "",
        " ".join(f"{name}: {value}" for name, value in summary["seconds"].items()),
        "",
        "Mixed precision used: "
        + ", ".join(f"{stage} {precision}" for stage, precision in summary["mixed_precision"].items())
        + " (`--mixed-precision auto` picks bf16 on CPUs with AMX and on GPUs with bf16; figures then differ "
        "slightly from a float32 run).",
        "",
    ]
    return "\n".join(lines)


def _inference_lines(inference: dict[str, dict] | None) -> list[str]:
    if inference is None:
        return ["The data have no validation split: edits use the default inference settings.", ""]
    chosen = []
    for name, saved in inference.items():
        s = SAVED_BEFORE | saved
        chosen.append(
            f"{name}: {LOCALIZED[saved_localize(s['localize'])]}, {s['inversion'].upper()} inversion "
            f"to depth {s['inversion_depth']}, guidance {s['guidance']:g}"
            f"{_late(s['guidance_start'], s['before_guidance'])}, "
            f"{AWAY_FROM[s['negative']]}{GIVEN[s['direction']]}{_held(s['hold'])}, {s['steps']} steps"
        )
    return [f"Inference settings chosen on the validation split (`cfgen tune-inference`): {'; '.join(chosen)}.", ""]


def _late(guidance_start: float, before_guidance: str) -> str:
    if not guidance_start:
        return ""
    before = " (the attribute left out of the steps before)" if before_guidance == "dropped" else ""
    return f" from {guidance_start:.0%} of the steps on{before}"


def _held(hold: float) -> str:
    return f", every other variable held at guidance {hold:g}" if hold else ""


def _pairing_note(sources: int | None) -> list[str]:
    if sources is None:
        return []
    return [
        f"Counterfactuals exist for {sources} training images: cf-augment, cf-reg and cf-contrastive draw "
        f"{PAIR_SHARE:.0%} of every batch (on average) from those (`--pair-share {PAIR_SHARE}`).",
    ]


def _pull_note(cf_weight: float, classifiers: dict) -> list[str]:
    if "cf-reg" not in classifiers:
        return []
    return [f"cf-reg pulls each image's features towards its counterfactual's with weight {cf_weight:g} "
            f"(`cfgen train-classifier --cf-weight {cf_weight:g}`)."]  # fmt: skip


def _splits(summary: dict) -> list[str]:
    first = next(iter(summary["classifiers"].values()), {})
    return [split for split in first if split != "train"]


def _soundness_lines(quality: dict) -> list[str]:
    if not quality["soundness_images"]:
        return []
    scores = quality["all"]
    return [
        f"Soundness on {quality['soundness_images']} edits (mean L1 pixel distance to the source, images in "
        f"[0, 1]): composition (edited to its own values) {scores['composition_l1_1']:.4f} after one edit, "
        f"{scores['composition_l1_10']:.4f} after ten; reversibility (edited back) {scores['reversibility_l1']:.4f}. "
        "Realism: Frechet distance between the judges' features of the sources and of the edits (0: the same "
        "distribution).",
        "",
    ]


def _quality_rows(quality: dict) -> list[tuple[str, dict]]:
    """All edits, then the rare and absent ones where they are a part of them (not none, not all)."""
    groups = ["all"] + [g for g in ("rare", "absent") if 0 < quality[g]["rows"] < quality["all"]["rows"]]
    return [(f"{group} edits ({quality[group]['rows']})", quality[group]) for group in groups]


def _attribute_columns(part: dict) -> list[str]:
    """The edited attributes, then every variable whose preservation was read ("all": every one kept)."""
    return [name for name in part["effectiveness"] if name != "all"] + list(part["preservation"])


def _attribute_cell(part: dict, name: str) -> str:
    """``reached 0.93`` for an edited attribute, ``kept 0.88`` for the others."""
    if name != "all" and name in part["effectiveness"]:
        return f"reached {_number(part['effectiveness'][name])}"
    return f"kept {_number(part['preservation'][name])}"


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
