"""The README stays a front door and the docs stay in step: the CLI reference is the parser's own
help, and every relative link in README.md and docs/*.md reaches a file."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from autoprune.cli import cli_reference

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 220  # issue 29: read in five minutes; everything else lives in docs/
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_INLINE = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.M)


def relative_links(text: str) -> list[str]:
    """The link targets of a Markdown page that point at files here: code blocks, web addresses and
    pure #anchors left out, #fragments stripped."""
    text = _FENCE.sub("", text)
    targets = _INLINE.findall(text) + _REFERENCE.findall(text)
    out = []
    for t in targets:
        if re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I) or t.startswith("#"):  # http:, https:, mailto:, anchors
            continue
        out.append(t.split("#", 1)[0])
    return out


def test_cli_reference_is_in_step_with_the_parser():
    page = ROOT / "docs" / "cli.md"
    assert page.read_text() == cli_reference(), "docs/cli.md is out of step; run: python scripts/make_cli_docs.py"


def test_cli_reference_names_every_search_flag():
    from autoprune.cli import build_parser

    search = next(a for a in build_parser()._actions if a.dest == "command").choices["search"]
    flags = {f for a in search._actions for f in a.option_strings}
    reference = cli_reference()
    assert {f for f in flags if f not in reference} == set()


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines, more than {README_MAX_LINES}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page):
    missing = [t for t in relative_links(page.read_text()) if not (page.parent / t).exists()]
    assert missing == [], f"{page.relative_to(ROOT)} links to files that do not exist: {missing}"


def test_relative_links_finds_what_a_reader_would_click():
    text = ("[a](docs/guide.md#budgets) ![b](docs/report.png) [c](https://x.org/y.md) [d](#usage)\n"
            "```\n[e](not/a/link.md)\n```\n[f]: results/benchmarks/quality.csv\n")
    assert relative_links(text) == ["docs/guide.md", "docs/report.png", "results/benchmarks/quality.csv"]
