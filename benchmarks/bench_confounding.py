"""Time the measure path on a 1,000,000-row dataset: read_imagefolder -> table.schema -> measure.

The metadata has a 10-class label and six attributes (categorical with 10, 4 and 3 values, one
binary, two continuous), some of them confounded with the label. Target: under 30 s in total
(read + schema + measure, default 1000 bootstrap resamples) on the project's 2-core machine.

    python benchmarks/bench_confounding.py [--rows N]

Prints the timings per phase and writes benchmarks/results/confounding_speed.json.

    python benchmarks/bench_confounding.py --coverage

Instead checks the intervals of the bias-corrected Cramér's V: how often they contain the true V
of simulated tables, for measure() and for plain resampling of the observed table, and writes
benchmarks/results/confounding_coverage.json.
"""

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.stats.contingency import association

from cfgen.confounding import format_report, measure
from cfgen.confounding.bootstrap import table_replicates
from cfgen.confounding.statistics import bergsma_v, chi2_batch, contingency, percentile_interval
from cfgen.data.table import MetadataTable, read_imagefolder, write_metadata
from cfgen.io import package_versions, write_json

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_SECONDS = 30.0
ATTRIBUTES = ["color", "background", "stroke", "italic", "size", "brightness"]


def make_columns(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Label and attributes as strings; color follows the label 90% of the time, size grows with it."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 10, rows)
    color = np.where(rng.random(rows) < 0.9, label, rng.integers(0, 10, rows))
    italic = rng.random(rows) < 0.3 + 0.04 * label
    colors = np.array(["red", "orange", "yellow", "lime", "green", "cyan", "blue", "purple", "pink", "brown"])
    return {
        "file_name": np.char.add(np.char.add("images/", np.arange(rows).astype(str)), ".png"),
        "digit": label.astype(str),
        "color": colors[color],
        "background": np.array(["black", "white", "grey", "noise"])[rng.integers(0, 4, rows)],
        "stroke": np.array(["thin", "medium", "thick"])[rng.integers(0, 3, rows)],
        "italic": np.where(italic, "yes", "no"),
        "size": np.round(label + rng.normal(0, 3, rows), 4).astype(str),
        "brightness": np.round(rng.normal(0.5, 0.1, rows), 4).astype(str),
    }


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_1_5_15_min": [round(x, 2) for x in os.getloadavg()],  # other work slows the timings
    }


def coverage(datasets: int = 100, n_bootstrap: int = 400) -> None:
    """Share of simulated datasets whose 95% interval holds the population's bias-corrected V."""
    rng = np.random.default_rng(0)
    rows = []
    for shape in ((10, 10), (4, 3)):
        tied = np.zeros(shape)
        tied[np.arange(shape[0]), np.arange(shape[0]) % shape[1]] = 1 / shape[0]
        for strength in (0.0, 0.02, 0.05, 0.3):
            p = (1 - strength) / tied.size + strength * tied
            truth = association(np.round(p * 10**9).astype(np.int64), method="cramer")
            for n in (2000, 20000):
                held = {"measure": 0, "plain resampling": 0}
                for _ in range(datasets):
                    a, b = np.divmod(rng.choice(p.size, size=n, p=p.ravel()), shape[1])
                    columns = {"y": np.char.add("c", a.astype(str)), "z": np.char.add("k", b.astype(str))}
                    table = MetadataTable(np.arange(n).astype(str), columns, "simulated")
                    seed = int(rng.integers(2**31))
                    entry = measure(table, table.schema("y", ["z"]), n_bootstrap=n_bootstrap, seed=seed)["pairs"][0]
                    held["measure"] += entry["ci_low"] <= truth <= entry["ci_high"]
                    counts = contingency(a, b, *shape)
                    replicates = table_replicates(
                        counts / n, n, lambda t: bergsma_v(*chi2_batch(t)), n_bootstrap, np.random.default_rng(seed)
                    )
                    low, high = percentile_interval(replicates, 0.95)
                    held["plain resampling"] += low <= truth <= high
                row = {"shape": list(shape), "v": round(float(truth), 4), "n": n}
                row |= {name: count / datasets for name, count in held.items()}
                rows.append(row)
                print(
                    f"{shape[0]}x{shape[1]}  V={truth:.3f}  n={n:>5}  coverage: measure {row['measure']:.2f}, "
                    f"plain resampling {row['plain resampling']:.2f}"
                )
    path = RESULTS / "confounding_coverage.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(
        path,
        {
            "command": " ".join(["python", *sys.argv]),
            "machine": machine(),
            "datasets_per_setting": datasets,
            "n_bootstrap": n_bootstrap,
            "confidence": 0.95,
            "coverage": rows,
        },
    )
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--coverage", action="store_true", help="check interval coverage instead of speed")
    args = parser.parse_args()
    if args.coverage:
        coverage()
        return

    timings: dict[str, float] = {}

    def timed(phase: str, work):
        start = time.perf_counter()
        result = work()
        timings[phase] = time.perf_counter() - start
        return result

    with tempfile.TemporaryDirectory() as folder:
        columns = timed("make columns (setup)", lambda: make_columns(args.rows))
        timed("write metadata.csv (setup)", lambda: write_metadata(Path(folder), columns))
        table = timed("read_imagefolder", lambda: read_imagefolder(folder))
        schema = timed("table.schema", lambda: table.schema("digit", ATTRIBUTES))
        report = timed("measure", lambda: measure(table, schema))
        timed("of which schema.encode (timed apart)", lambda: schema.encode(table.columns))
    total = timings["read_imagefolder"] + timings["table.schema"] + timings["measure"]

    print(format_report(report))
    print()
    width = max(len(phase) for phase in timings)
    for phase, seconds in timings.items():
        print(f"{phase.ljust(width)}  {seconds:7.2f} s")
    print(f"{'total (read + schema + measure)'.ljust(width)}  {total:7.2f} s  (target < {TARGET_SECONDS:.0f} s)")

    path = RESULTS / "confounding_speed.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(
        path,
        {
            "command": " ".join(["python", *sys.argv]),
            "machine": machine(),  # load average as the measurement ended
            "versions": package_versions(),
            "rows": args.rows,
            "label": "digit",
            "attributes": {name: report["kinds"][name] for name in ATTRIBUTES},
            "settings": report["settings"],
            "seconds": {phase: round(seconds, 3) for phase, seconds in timings.items()},
            "total_seconds": round(total, 3),
            "target_seconds": TARGET_SECONDS,
            "meets_target": total < TARGET_SECONDS,
            "score": report["score"],
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
