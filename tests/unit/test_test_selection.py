"""Plain `python -m pytest` is the fast default (slow tests deselected); scripts/test.sh, the
README's test command that .ci/run calls, runs everything with --run-slow."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SLOW_FILE = "tests/e2e/test_reshape.py"  # every test in it is marked slow


def _collect(*args):
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                          "-p", "no:cacheprovider", SLOW_FILE, *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    return out.stdout


def test_plain_pytest_deselects_slow_tests_and_says_how_to_run_them():
    out = _collect()
    assert "no tests collected" in out and "deselected" in out, out[-2000:]
    assert "slow tests deselected: run them with --run-slow" in out


def test_run_slow_and_explicit_marker_expressions_select_them():
    for args in (["--run-slow"], ["-m", "slow"]):
        out = _collect(*args)
        assert "test_universal_checkpoint_resumes_the_curve_on_another_layout" in out, (args, out)
        assert "deselected" not in out, (args, out[-2000:])
    assert "deselected" in _collect("--run-slow", "-m", "not slow")  # -m wins


def test_ci_command_runs_the_full_suite():
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
    assert 'exec python -m pytest --run-slow "$@"' in (ROOT / "scripts" / "test.sh").read_text()
