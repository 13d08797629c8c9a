"""Make torchvision importable when its compiled extension does not match the installed torch.

PyPI only ships CUDA builds of torchvision. Next to a CPU build of torch its extension (``_C.so``)
cannot load, torchvision then registers fake kernels for operators that were never defined, and
``import torchvision`` fails with "operator torchvision::nms does not exist". diffusers imports
torchvision whenever it is installed, so diffusers breaks too. Defining the schemas of the two
operators that torchvision only ever registers from C++ lets the pure-Python parts (transforms,
models, datasets, utils) import and work. Where the extension loads, nothing is done.

``patch_before_import`` defers all of it (and torch's import) to the first import of torchvision
or diffusers, so that importing cfgen, and ``cfgen --help``, stay light.
"""

import importlib.abc
import importlib.util
import sys
from pathlib import Path

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # the torch.library.Library, kept alive: the schemas vanish with it


def torchvision_extension_loads() -> bool:
    """Whether torchvision's compiled extension loads into this torch (True if absent or fine)."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True
    extensions = sorted(Path(spec.submodule_search_locations[0]).glob("_C*.so"))
    if not extensions:
        return True
    import torch

    try:
        torch.ops.load_library(str(extensions[0]))
    except OSError:
        return False
    return True


def patch_torchvision() -> bool:
    """Define the missing operator schemas if needed; returns whether it did anything."""
    global _library
    if _library is not None or "torchvision" in sys.modules or torchvision_extension_loads():
        return False
    import torch

    _library = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _SCHEMAS:
        _library.define(schema)
    return True


class _PatchFirst(importlib.abc.MetaPathFinder):
    """Applies ``patch_torchvision`` when torchvision or diffusers is first imported, then steps aside."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name in ("torchvision", "diffusers"):
            sys.meta_path.remove(self)
            patch_torchvision()
        return None  # the import itself goes on as usual


def patch_before_import() -> None:
    """Defer ``patch_torchvision`` to the first import of torchvision or diffusers."""
    if not any(isinstance(finder, _PatchFirst) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PatchFirst())
