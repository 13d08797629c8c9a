"""torchvision and diffusers import and work beside this torch build (see cfgen/_torchvision_compat.py)."""

import subprocess
import sys

import pytest

SCRIPT = """
import sys
import cfgen._torchvision_compat as compat  # importing cfgen defers the patch to torchvision's import
assert "torch" not in sys.modules and compat._library is None  # importing cfgen stays light
import torch, torchvision
patched = compat._library is not None
assert patched == (not compat.torchvision_extension_loads()), patched
assert compat.patch_torchvision() is False  # once is enough
from torchvision.transforms import v2
from diffusers import UNet2DModel
image = v2.RandomResizedCrop(16)(torch.rand(3, 32, 32))
logits = torchvision.models.resnet18(weights=None, num_classes=3).eval()(torch.rand(1, 3, 32, 32))
unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8),
                   down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                   norm_num_groups=4, layers_per_block=1)
out = unet(torch.rand(2, 1, 8, 8), torch.tensor([1, 2])).sample
print(tuple(image.shape), tuple(logits.shape), tuple(out.shape))
"""


NOTHING_AFTER_TORCHVISION = (
    "import cfgen\nimport torchvision\nimport cfgen._torchvision_compat as c\nprint(c.patch_torchvision())"
)
HELP = (
    "import sys\nfrom cfgen.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
    "print(sorted(m for m in ('torch', 'diffusers', 'numpy') if m in sys.modules))"
)

METER = "import sys\nimport cfgen.cli.measure\nprint(sorted(m for m in ('torch', 'diffusers') if m in sys.modules))"


@pytest.fixture(scope="module")
def ran() -> dict[str, subprocess.CompletedProcess]:
    """Each script in a fresh interpreter, all at once (each spends its time importing)."""
    scripts = {"compat": SCRIPT, "after torchvision": NOTHING_AFTER_TORCHVISION, "help": HELP, "meter": METER}
    running = {name: subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True) for name, script in scripts.items()}  # fmt: skip
    finished = {}
    for name, process in running.items():
        stdout, stderr = process.communicate(timeout=120)
        finished[name] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    return finished


def test_torchvision_and_diffusers_work(ran) -> None:
    result = ran["compat"]
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[-2] == "(3, 16, 16) (1, 3) (2, 1, 8, 8)"


def test_nothing_is_done_once_torchvision_is_imported(ran) -> None:
    result = ran["after torchvision"]
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr[-2000:]


def test_cfgen_help_imports_neither_torch_nor_diffusers(ran) -> None:
    result = ran["help"]
    assert result.returncode == 0 and result.stdout.strip().endswith("[]"), result.stdout[-500:] + result.stderr[-2000:]


def test_the_meter_imports_no_torch(ran) -> None:
    """``cfgen measure`` reads pixels only, so it should not pay for importing torch."""
    result = ran["meter"]
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout[-500:] + result.stderr[-2000:]
