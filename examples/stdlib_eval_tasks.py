"""Write two lm-evaluation-harness tasks from held-out docstrings (text the quickstart model
never trained on), as local task YAMLs for `--include-path`:

- stdlib_heldout_ppl: rolling-window perplexity and bits per byte of each held-out document
  (lm-eval's loglikelihood_rolling, as its wikitext task);
- stdlib_cloze: zero-shot multiple choice: given a docstring's first paragraph, pick its real
  next sentence among four (the other three come from other held-out docstrings).

    python examples/stdlib_eval_tasks.py --heldout runs/quickstart/data/heldout.jsonl \
        --output-dir runs/quickstart/eval_tasks
"""
from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

PPL_YAML = """task: stdlib_heldout_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: loglikelihood_rolling
test_split: test
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
metadata:
  version: 1.0
"""

CLOZE_YAML = """task: stdlib_cloze
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{context}}}}"
doc_to_target: label
doc_to_choice: "{{{{choices}}}}"
target_delimiter: "\\n\\n"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def first_sentence(paragraph: str, limit: int = 200) -> str:
    m = re.match(r"(.+?[.!?])(\s|$)", paragraph.replace("\n", " "), flags=re.S)
    return (m.group(1) if m else paragraph)[:limit].strip()


def cloze_items(texts: list[str], seed: int = 0) -> list[dict]:
    pairs = []
    for text in texts:
        paras = [p.strip() for p in text.split("\n\n") if len(p.strip()) >= 40]
        if len(paras) >= 2:
            pairs.append((paras[0][:400], first_sentence(paras[1])))
    rng = random.Random(seed)
    items = []
    for i, (context, answer) in enumerate(pairs):
        others = [a for j, (_, a) in enumerate(pairs) if j != i and a != answer]
        if len(others) < 3:
            continue
        choices = rng.sample(others, 3) + [answer]
        rng.shuffle(choices)
        items.append({"context": context, "choices": choices, "label": choices.index(answer)})
    return items


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--heldout", required=True, type=Path, help="jsonl with a 'text' field.")
    p.add_argument("--output-dir", required=True, type=Path)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    texts = [json.loads(line)["text"] for line in args.heldout.read_text().splitlines() if line]
    if not texts:
        p.error(f"--heldout {args.heldout}: no documents")
    out = args.output_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    ppl_data = out / "stdlib_heldout_ppl.jsonl"
    ppl_data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    (out / "stdlib_heldout_ppl.yaml").write_text(PPL_YAML.format(data=ppl_data))
    items = cloze_items(texts, args.seed)
    cloze_data = out / "stdlib_cloze.jsonl"
    cloze_data.write_text("".join(json.dumps(x) + "\n" for x in items))
    (out / "stdlib_cloze.yaml").write_text(CLOZE_YAML.format(data=cloze_data))
    print(f"wrote tasks stdlib_heldout_ppl ({len(texts)} documents) and stdlib_cloze "
          f"({len(items)} questions, 4 choices) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
