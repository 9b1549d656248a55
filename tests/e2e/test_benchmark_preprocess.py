"""tools/benchmark_preprocess.py end to end: times two preprocessing tools on one input and
checks their outputs token for token. Our own checkout stands in for Megatron-LM's (its
tools/preprocess_data.py takes the same flags), so the comparison must report a match."""
import re
import sys

import pytest

from cli_runner import ROOT, run

pytestmark = pytest.mark.slow


def test_side_by_side_table_and_token_for_token_check(tiny_data, tmp_path):
    out = run([sys.executable, "tools/benchmark_preprocess.py", "--input",
               str(tiny_data["dir"] / "stdlib.jsonl"), "--tokenizer-model", tiny_data["spm"],
               "--workers", "1", "2", "--megatron-lm", str(ROOT), "--output-dir",
               str(tmp_path)]).stdout
    rows = re.findall(r"^\| (ours|Megatron-LM) \| (\d) \| [0-9.]+ \| [0-9,]+ \| ([0-9,]+) \|",
                      out, re.M)
    assert [(t, w) for t, w, _ in rows] == [("ours", "1"), ("Megatron-LM", "1"), ("ours", "2"),
                                            ("Megatron-LM", "2")], out
    assert all(int(tps.replace(",", "")) > 0 for _, _, tps in rows)
    assert "workers 1: outputs match" in out and "workers 2: outputs match" in out
