"""Write docs/cli.md, the flag reference of pretrain_gpt.py, from the parser itself.

    python tools/gen_cli_reference.py            # rewrite docs/cli.md
    python tools/gen_cli_reference.py --check    # exit 1 if docs/cli.md is out of date
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from megatron.config.cli import build_parser  # noqa: E402

TARGET = ROOT / "docs" / "cli.md"


def render() -> str:
    parser = build_parser()
    lines = ["# pretrain_gpt.py flags", "",
             "Generated from the parser by `python tools/gen_cli_reference.py`; a test keeps it "
             "in sync. Names follow Megatron-DeepSpeed.", ""]
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if a.option_strings and a.dest != "help"]
        if not actions:
            continue
        lines += [f"## {group.title}", "", "| flag | default | help |", "| --- | --- | --- |"]
        for a in actions:
            flags = ", ".join(f"`{o}`" for o in a.option_strings)
            if a.choices:
                flags += " {" + ", ".join(str(c) for c in a.choices) + "}"
            default = "" if a.default in (None, False, [], argparse.SUPPRESS) else f"`{a.default}`"
            if a.const is not None and a.nargs == 0:
                default = ""
            lines.append(f"| {flags} | {default} | {a.help} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{TARGET} is out of date: run python tools/gen_cli_reference.py")
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
