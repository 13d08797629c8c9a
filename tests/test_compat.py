"""torchvision and diffusers import and work beside this torch build (see cfgen/_torchvision_compat.py)."""

import subprocess
import sys

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


def test_torchvision_and_diffusers_work() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[-2] == "(3, 16, 16) (1, 3) (2, 1, 8, 8)"


def test_nothing_is_done_once_torchvision_is_imported() -> None:
    script = "import torchvision\nimport cfgen._torchvision_compat as c\nprint(c.patch_torchvision())"
    result = subprocess.run([sys.executable, "-c", "import cfgen\n" + script], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr[-2000:]


def test_cfgen_help_imports_neither_torch_nor_diffusers() -> None:
    script = (
        "import sys\nfrom cfgen.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'numpy') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip().endswith("[]"), result.stdout[-500:] + result.stderr[-2000:]
