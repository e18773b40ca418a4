"""No broken references in the README and docs/.

- every relative Markdown link names a file or folder that exists, and a `#anchor` names a
  heading of the page it points at (GitHub's slugs);
- every repository path written in backticks (`services/store/LAYOUT.md`, `tests/index/`)
  exists, so a renamed file cannot leave its old name behind in the prose.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
CODE_PATH = re.compile(
    r"`((?:\.\./)?[A-Za-z0-9_.-]+/[A-Za-z0-9_./-]*?(?:\.(?:py|md|yaml|yml|json|proto|lua|lock|toml|sh|js|go)|/))`"
)
TOP = {p.name for p in ROOT.iterdir()}


def slug(heading: str) -> str:
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


def _prose(page: Path) -> str:
    return re.sub(r"```.*?```", "", page.read_text(), flags=re.S)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in LINK.findall(_prose(page)):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor}")
    assert broken == [], f"{page.relative_to(ROOT)}: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_paths_in_backticks_exist(page: Path) -> None:
    missing = []
    for ref in CODE_PATH.findall(_prose(page)):
        first = ref.split("/", 1)[0]
        if ref.startswith("../"):
            base = page.parent
        elif first in TOP:
            base = ROOT
        else:  # a path relative to the page (or not a path of this repository)
            base = page.parent
            if not (base / first).exists():
                continue
        if not (base / ref).exists():
            missing.append(ref)
    assert missing == [], f"{page.relative_to(ROOT)} names paths that do not exist: {missing}"


def test_the_check_sees_a_broken_link(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("# Title\n[ok](#title) [gone](nowhere.md) [bad](#nope)\n")
    targets = LINK.findall(_prose(page))
    assert targets == ["#title", "nowhere.md", "#nope"]
    assert anchors(page) == {"title"}
