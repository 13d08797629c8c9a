"""How far apart counterfactuals are when the same command runs with another batch size or process count.

`cfgen generate` plans every request identically on every process, so which images it makes
never changes; the pixels can, because floating-point sums depend on how a batch is laid out.
This measures it on a trained generator: the same plan made again with the same settings (must
be bytewise identical), with another --batch-size, and with two processes (accelerate over gloo).

    python benchmarks/bench_determinism.py --generator GEN --data DATA [--limit 64] [--steps 20]
        [--localize no|edit|others] [--inversion ddim|ddpm]

Writes benchmarks/results/determinism.json.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from common import machine
from PIL import Image

from cfgen.io import write_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "determinism.json"  # one entry per editing procedure


def generate(out: Path, args: argparse.Namespace, batch_size: int, processes: int) -> Path:
    command = ["-m", "cfgen", "generate", "--generator", args.generator, "--data", args.data, "--intervene",
               args.intervene, "--split", "test", "--limit", str(args.limit), "--ddim-steps", str(args.steps),
               "--batch-size", str(batch_size), "--mixed-precision", "no", "--out", str(out),
               "--localize", args.localize, "--inversion", args.inversion]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if processes > 1:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        launch = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                  "--main_process_port", str(port)]  # fmt: skip
        command = [*launch, *command[1:]]
        env["ACCELERATE_USE_CPU"] = "1"
    subprocess.run([sys.executable, *command], env=env, check=True, capture_output=True)
    return out


def pixels(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p), dtype=np.int16) for p in sorted((folder / "images").iterdir())])


def compare(reference: np.ndarray, other: np.ndarray) -> dict[str, Any]:
    difference = np.abs(reference - other)
    per_image = difference.reshape(len(difference), -1).max(axis=1)
    return {
        "bytewise_identical": bool((difference == 0).all()),
        "images_differing": float((per_image > 0).mean()),
        "max_abs_difference_255": int(difference.max()),
        "median_over_images_of_max_difference_255": float(np.median(per_image)),
        "mean_abs_difference_255": float(difference.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--intervene", default="fg_color=random")
    parser.add_argument("--limit", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--localize", default="no", choices=("no", "edit", "others"), help="the edit's mask")
    parser.add_argument("--inversion", default="ddpm", choices=("ddpm", "ddim"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        reference = pixels(generate(work / "reference", args, batch_size=64, processes=1))
        runs = {
            "same settings again": (64, 1),
            "batch size 8": (8, 1),
            "two processes, batch size 64": (64, 2),
        }
        results = {
            name: compare(reference, pixels(generate(work / f"run-{i}", args, batch, processes)))
            for i, (name, (batch, processes)) in enumerate(runs.items())
        }
    previous = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    entries = previous.get("entries", {})
    procedure = {"no": "plain", "edit": "localized"}.get(args.localize, f"localized ({args.localize} mask)")
    entries[procedure if args.inversion == "ddim" else f"{procedure}, {args.inversion} inversion"] = {
        "settings": vars(args), "machine": machine(), "results": results, "command": " ".join(["python", *sys.argv]),
    }  # fmt: skip
    write_json(RESULTS, {
        "benchmark": "counterfactual pixels across batch sizes and process counts (reference: batch 64, one process)",
        "entries": entries,
    })  # fmt: skip
    for name, figures in results.items():
        print(f"{name}: {figures}")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
