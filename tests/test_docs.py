"""README is a guide that links every docs/ page; each page opens with its title and what it covers;
every relative link in them points at a file that exists."""

import re

from helpers import DOCS, README

LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_readme_is_a_guide_of_at_most_300_lines():
    assert len(README.read_text().splitlines()) <= 300


def test_readme_links_every_docs_page():
    linked = set(LINK.findall(README.read_text()))
    pages = {f"docs/{p.name}" for p in DOCS.glob("*.md")}
    assert len(pages) >= 10 and not pages - linked, f"README does not link {sorted(pages - linked)}"


def test_each_docs_page_starts_with_a_title_and_what_it_covers():
    for page in sorted(DOCS.glob("*.md")):
        title, blank, covers, *_ = page.read_text().splitlines()
        assert title.startswith("# ") and not blank and covers and not covers.startswith(("#", "```")), page.name


def test_relative_links_resolve():
    for page in [README, *DOCS.glob("*.md")]:
        for target in LINK.findall(page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.name}: link to {target}"
