import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "tests")):
    if path not in sys.path:
        sys.path.insert(0, path)
os.environ.setdefault("OMP_NUM_THREADS", "1")


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def tp1_layout():
    """Single-process parallel state (TP = PP = DP = 1) for in-process model tests of a module."""
    import torch.distributed as dist

    from megatron.config.schema import ParallelConfig
    from megatron.parallel.layout import destroy_parallel, initialize_parallel
    started = not dist.is_initialized()
    yield initialize_parallel(ParallelConfig())
    if started:
        destroy_parallel()


# Plain `python -m pytest` is the fast default: tests marked `slow` are deselected unless
# --run-slow is given (scripts/test.sh, what CI runs, passes it: everything) or an -m
# expression chooses explicitly (`-m slow`, `-m "not slow"`).
def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run tests marked slow (deselected by default)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow") or config.getoption("markexpr", ""):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]
        config._slow_deselected = len(slow)


def pytest_terminal_summary(terminalreporter, config):
    n = getattr(config, "_slow_deselected", 0)
    if n:
        terminalreporter.write_line(f"{n} slow tests deselected: run them with --run-slow "
                                    f"(bash scripts/test.sh does) or -m slow")
