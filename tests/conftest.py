"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def scenes_annotations(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic scenes data set, generated once per test session (24 images of 48 px:
    20 train, 2 val, 2 test); returns its Karpathy-format dataset_scenes.json."""
    from captioner.scenes import MIN_SIZE, generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("scenes"), 24, seed=0, size=MIN_SIZE)
