"""Captioning-page helpers that hold no UI: the size random scenes are drawn at."""

from __future__ import annotations

from captioner.scenes import MAX_SIZE, MIN_SIZE


def scene_size(image_size: int) -> int:
    """Side of a scene drawn for a captioner whose input is ``image_size`` pixels square.

    The captioner's own input size, kept within what the scenes generator draws legibly
    (`captioner.scenes.MIN_SIZE` .. `MAX_SIZE`); the captioner's transform resizes it as needed.
    The app and the demo-model test draw scenes at this size.
    """
    return min(MAX_SIZE, max(MIN_SIZE, image_size))
