"""Import a script from tools/ as a module, for tests that call its functions in-process."""
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_tool(name):
    """Import tools/NAME.py once per process (pool workers unpickle its functions by name)."""
    if f"tool_{name}" in sys.modules:
        return sys.modules[f"tool_{name}"]
    spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
