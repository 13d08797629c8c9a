"""Does the meter recover the confounding strength that generated a built-in dataset?

For each strength, build colored MNIST with digit -> fg_color tied at that strength, measure the
training split, and compare the measured association (bias-corrected Cramér's V) with the value
the sampling mechanism implies (Cramér's V of its exact joint distribution). Prints the table and
saves it to benchmarks/results/known_strength.json.

    python3 benchmarks/bench_known_strength.py [--strengths 0,0.5,0.9,0.99] [--train-size 6000]
"""

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.stats.contingency import association

from cfgen.confounding import measure
from cfgen.data.table import read_imagefolder
from cfgen.datasets.colored_mnist.rendering import ColoredMNISTConfig, make_colored_mnist, population_joint

RESULTS = Path(__file__).parent / "results" / "known_strength.json"


def implied_v(config: ColoredMNISTConfig) -> float:
    joint = population_joint(config, "digit", "fg_color")
    if joint.min() == joint.max():  # independent and uniform: V is 0 (scipy cannot take a constant table)
        return 0.0
    return float(association(np.rint(joint * 1e9).astype(np.int64), method="cramer"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strengths", default="0,0.5,0.9,0.99")
    parser.add_argument("--train-size", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for strength in map(float, args.strengths.split(",")):
            sizes = {"train": args.train_size, "validation": 0, "test": 0, "test_anti": 0}
            config = ColoredMNISTConfig(strength=strength, sizes=sizes, seed=args.seed)
            start = time.perf_counter()
            folder = make_colored_mnist(config, Path(tmp) / f"s{strength}")
            built = time.perf_counter() - start
            table = read_imagefolder(folder)
            report = measure(table, table.schema(), seed=args.seed)
            pair = next(p for p in report["pairs"] if {p["a"], p["b"]} == {"digit", "fg_color"})
            expected = implied_v(config)
            rows.append(
                {
                    "strength": strength,
                    "implied": expected,
                    "measured": pair["value"],
                    "ci_low": pair["ci_low"],
                    "ci_high": pair["ci_high"],
                    "within_ci": pair["ci_low"] <= expected <= pair["ci_high"],
                    "uncorrected_v": pair["cramers_v"],
                    "build_seconds": round(built, 2),
                }
            )
    print(f"{'strength':>8} {'implied V':>10} {'measured V':>11} {'95% CI':>17} {'within':>7}")
    for r in rows:
        interval = f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        print(f"{r['strength']:>8} {r['implied']:>10.3f} {r['measured']:>11.3f} {interval:>17} {r['within_ci']!s:>7}")
    RESULTS.parent.mkdir(exist_ok=True)
    payload = {
        "command": " ".join(["python3", *sys.argv]),
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "train_size": args.train_size,
        "rows": rows,
    }
    RESULTS.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
