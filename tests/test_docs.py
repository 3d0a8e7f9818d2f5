"""The repository's docs stand alone: a clone has no ../shared beside it."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _docs():
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def test_docs_do_not_point_outside_the_repository():
    for path in _docs():
        assert "../shared" not in path.read_text(), f"{path.relative_to(REPO)} points into ../shared"


def test_every_relative_link_in_the_readme_exists():
    text = (REPO / "README.md").read_text()
    targets = {t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in t}
    missing = [t for t in sorted(targets) if t and not (REPO / t).exists()]
    assert not missing, f"README links to missing files: {missing}"
