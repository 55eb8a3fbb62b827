"""The README stays a landing page (issue 28): at most 200 lines, linking every page of
the documentation site; and the site's navigation (mkdocs.yml) names every page under
docs/, so none is built but unreachable. The site's own build (`make docs`, strict, in
CI) checks the links between its pages, the API and the CLI reference."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
# Folders under docs/ that hold no pages: the build's hooks.
NOT_PAGES = {"hooks"}


def _nav_pages() -> list[str]:
    """The pages mkdocs.yml's nav names, relative to docs/ (``- Title: page.md`` lines)."""
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = text[text.index("\nnav:"):]
    return re.findall(r"^\s*-\s*(?:[^:\n]+:\s*)?([\w./-]+\.md)\s*$", nav, re.M)


def _readme_links() -> set[str]:
    """The local targets of the README's Markdown links, without their #anchors."""
    targets = re.findall(r"\]\(([^)\s]+)\)", README.read_text(encoding="utf-8"))
    return {t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t)}


def test_the_readme_is_a_landing_page_of_at_most_200_lines():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move the detail to docs/"


def test_the_nav_names_pages_that_exist():
    pages = _nav_pages()
    assert len(pages) >= 10 and "index.md" in pages
    assert [p for p in pages if not (DOCS / p).is_file()] == []


@pytest.mark.parametrize("page", _nav_pages())
def test_the_readme_links_every_page_of_the_site(page):
    assert f"docs/{page}" in _readme_links(), f"README.md does not link docs/{page}"


def test_every_page_under_docs_is_in_the_nav():
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")
             if p.relative_to(DOCS).parts[0] not in NOT_PAGES}
    assert pages - set(_nav_pages()) == set(), "add these pages to mkdocs.yml's nav"


def test_the_readme_links_only_files_that_exist():
    assert [t for t in _readme_links() if not (ROOT / t).exists()] == []
