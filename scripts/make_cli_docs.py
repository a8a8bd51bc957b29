"""Write docs/cli.md, the command-line reference, from autoprune's own argument parser.

The page is ``autoprune.cli.cli_reference()``: the ``--help`` of ``autoprune`` and of every
sub-command. ``tests/test_docs.py`` fails when the page and the parser differ; rerun this then.

    python scripts/make_cli_docs.py          # rewrite docs/cli.md
    python scripts/make_cli_docs.py --check  # exit 1 if docs/cli.md is out of step, write nothing
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from autoprune.cli import cli_reference

PAGE = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say whether docs/cli.md is in step")
    args = parser.parse_args()
    page = cli_reference()
    current = PAGE.read_text() if PAGE.exists() else None
    if args.check:
        if current != page:
            print(f"{PAGE} is out of step with the parser; run: python scripts/make_cli_docs.py", file=sys.stderr)
            return 1
        print(f"{PAGE} is in step")
        return 0
    if current == page:
        print(f"{PAGE} already in step")
        return 0
    PAGE.parent.mkdir(parents=True, exist_ok=True)
    PAGE.write_text(page)
    print(f"written: {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
