"""Every requirement has a tried floor, the extras' included, and the README names each one
(docs/robustness.md, 18).

A requirement without one let uv's `--resolution lowest-direct` pick nltk 2.0.1, which does not
install; `scripts/lowest_requirements.sh` runs the suite at the floors, and this keeps the floors
and the README's list of them from drifting apart."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
FLOOR = re.compile(r"([A-Za-z0-9_.-]+)>=([0-9][0-9.]*)")


def readme_requirements() -> str:
    """The README's paragraph that lists the requirements, on one line."""
    text = (REPO / "README.md").read_text()
    start = text.index("The project needs Python")
    return " ".join(text[start : text.index("\n\n", start)].split())


def requirements() -> list[str]:
    """The project's requirements and its extras' but `dev`'s (its tools need no floor)."""
    extras = PROJECT["optional-dependencies"]
    return PROJECT["dependencies"] + [r for name, rs in extras.items() if name != "dev" for r in rs]


def test_every_requirement_has_a_floor():
    for requirement in requirements():
        assert FLOOR.fullmatch(requirement), f"{requirement!r} needs a tried floor (name>=version)"


def test_make_test_installs_every_extra():
    """`make test` installs `.[dev]`: through it, every other extra at its floor or above."""
    extras = set(PROJECT["optional-dependencies"]) - {"dev"}
    (itself,) = [r for r in PROJECT["optional-dependencies"]["dev"] if r.startswith("crnn[")]
    assert set(itself.removeprefix("crnn[").removesuffix("]").split(",")) == extras


def test_the_readme_names_every_floor():
    paragraph = readme_requirements()
    floors = dict(FLOOR.fullmatch(r).groups() for r in requirements())
    floors["Python"] = PROJECT["requires-python"].removeprefix(">=")
    for name, version in floors.items():
        # "Pillow >= 10.3", "torchvision (>= 0.19)"
        pattern = rf"\b{re.escape(name)}\W{{0,2}}>= {re.escape(version)}(?![0-9.]*[0-9])"
        assert re.search(pattern, paragraph, re.IGNORECASE), f"README lacks {name} >= {version}"
