"""What the command-line tools share: a parser whose help is the tool's module docstring, and
quiet megatron-core imports (it warns about the optional Transformer Engine and Apex on import,
so this module is imported before anything from megatron.core)."""
from __future__ import annotations

import argparse
import warnings

warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")


def tool_parser(doc: str) -> argparse.ArgumentParser:
    """Description: the docstring's first paragraph; epilog: the rest, shown as written."""
    first, _, rest = doc.partition("\n\n")
    return argparse.ArgumentParser(description=first, epilog=rest,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
