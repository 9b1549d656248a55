"""The optional Hopper kernel libraries (`--mlp-kernel quack`, `--attention-kernel fa4`):
whether this machine can run them, and if not, why."""
from __future__ import annotations

import importlib
import importlib.util
from typing import Optional

import torch


def unavailable_reason(module: str, tested: str) -> Optional[str]:
    """Why `module` (e.g. "quack.epilogue.library", from the pip requirement `tested`, e.g.
    "quack-kernels==0.6.4") cannot run on this machine, or None when it can."""
    if not torch.cuda.is_available():
        return "it needs a CUDA GPU (Hopper, compute capability 9.0, or newer)"
    major, minor = torch.cuda.get_device_capability()
    if major < 9:
        return (f"it needs a Hopper GPU or newer (compute capability 9.0+); this GPU is "
                f"{major}.{minor}")
    package = tested.split("==")[0]
    if importlib.util.find_spec(module.split(".")[0]) is None:
        return f"the {package} package is not installed (pip install {tested})"
    try:  # e.g. where quack 0.6.5 fails (its epilogue cache keys) with nvidia-cutlass-dsl 4.7 / 4.8
        importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - any failure here means the kernels cannot run
        return f"{module} failed to load ({type(e).__name__}: {e}); {tested} is the tested version"
    return None
