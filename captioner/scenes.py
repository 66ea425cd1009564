"""Synthetic "scenes": a captioning data set whose captions a model can learn exactly.

Each image shows 1-3 objects, each a size (small, large), a colour (8) and a shape (6), on a muted
textured background with low-contrast clutter (lines and dots that are never captioned). Several
objects stand in a row (left to right) or a column (top to bottom); consecutive objects are apart
along that axis, with a gap, and offset across it by at most 0.35 of the distance along it, so
"left of" / "above" are never in doubt and objects never overlap.

The captions are a function of the picture, up to the choice of paraphrase. Objects are named in
their canonical order (left to right or top to bottom) as "<size> <colour> <shape>", with the
relation of each consecutive pair; every reference of an image names the same objects:

    1 object:   "a small red circle", "there is a small red circle", "a single small red circle"
    2 in a row: "a small red circle to the left of a large blue square",
                "a large blue square to the right of a small red circle",
                "there is a small red circle left of a large blue square", ...
    3 in a row: "a A to the left of a B to the left of a C",
                "from left to right, a A, a B and a C", ...  (columns: "above" / "below")

Three-object scenes hold at most two large objects, so that a row always fits in the image.

The hard preset (``--preset hard``) is a benchmark that 15 minutes of CPU training does not
saturate: 2-4 objects in 11 colours, identical objects counted ("two small red circles"), rows
and columns of up to three groups, one object partly hiding another ("a small red circle in
front of a large blue square", plus up to two others), objects in the corners ("... in the top
left corner"), textured backgrounds (stripes, checks, speckle) with faint outlines of shapes that
are never captioned, and five paraphrases per image with synonyms ("little", "big"); about 70
words. See `generate_hard_scene`.

`python -m captioner.scenes --out DIR --num-images N --seed S [--preset hard]` writes
DIR/images/*.png and DIR/dataset_scenes.json in the Karpathy split format, with each image's
ground truth under the extra key "scene", so the generic karpathy loader reads it
(`load_records("karpathy", json)`). The same seed gives byte-identical images and JSON.
`caption_names_objects_correctly` checks a caption against the ground truth of either preset.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from captioner.data.formats import exact_split, validate_fractions
from captioner.data.vocab import tokenize
from recurrent.errors import ArgumentParser, UserError, run_cli, shown
from recurrent.files import atomic_write_text, hold, named, release

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
COLORS = {
    "red": (215, 35, 35),
    "green": (35, 160, 55),
    "blue": (35, 75, 220),
    "yellow": (250, 220, 30),
    "purple": (140, 55, 185),
    "orange": (250, 135, 15),
    "white": (250, 250, 250),
    "black": (20, 20, 20),
}
# Side of an object's square box, as a fraction of the image side: about 2x apart.
SIZES = {"small": 0.15, "large": 0.30}
# Mid-tone, low-saturation backgrounds: white, yellow and black objects all stay visible on them.
BACKGROUNDS = {
    "grey": (140, 140, 140),
    "beige": (165, 150, 122),
    "slate": (112, 125, 145),
    "rose": (160, 124, 132),
    "taupe": (132, 122, 110),
}
NUM_OBJECTS_WEIGHTS = {1: 0.2, 2: 0.45, 3: 0.35}
MARGIN = 0.03  # free border, fraction of the image side
MIN_GAP = 0.05  # least gap between consecutive objects along their axis
MAX_CROSS_RATIO = 0.35  # offset across the axis <= this x the centre distance along it
SUPERSAMPLE = 2  # draw at 2x and downscale: smooth edges at a small cost
MIN_SIZE, MAX_SIZE = 48, 1024
JSON_NAME = "dataset_scenes.json"
IMAGE_FOLDER = "images"

SINGLE_TEMPLATES = ("a {0}", "there is a {0}", "a single {0}")
PAIR_TEMPLATES = {
    "row": (
        "a {0} to the left of a {1}",
        "a {1} to the right of a {0}",
        "there is a {0} left of a {1}",
        "a {0} is to the left of a {1}",
    ),
    "column": (
        "a {0} above a {1}",
        "a {1} below a {0}",
        "there is a {0} above a {1}",
        "a {0} is above a {1}",
    ),
}
TRIPLE_TEMPLATES = {
    "row": (
        "a {0} to the left of a {1} to the left of a {2}",
        "a {2} to the right of a {1} to the right of a {0}",
        "from left to right, a {0}, a {1} and a {2}",
        "a {0}, a {1} and a {2} from left to right",
        "there is a {0} left of a {1} left of a {2}",
    ),
    "column": (
        "a {0} above a {1} above a {2}",
        "a {2} below a {1} below a {0}",
        "from top to bottom, a {0}, a {1} and a {2}",
        "a {0}, a {1} and a {2} from top to bottom",
        "there is a {0} above a {1} above a {2}",
    ),
}
RELATIONS = {"single": None, "row": "left of", "column": "above"}

# The hard preset (see `generate_hard_scene`).
PRESETS = ("demo", "hard")
HARD_COLORS = {
    **COLORS,
    "pink": (245, 120, 190),
    "brown": (125, 70, 25),
    "cyan": (30, 200, 215),
}
ALL_COLORS = HARD_COLORS  # every colour word of either preset
HARD_SIZES = {"small": 0.13, "large": 0.25}  # smaller than the demo's: four objects fit a row
SIZE_SYNONYMS = {"small": ("small", "little"), "large": ("large", "big")}  # by reference parity
PLURALS = {shape: shape + ("es" if shape.endswith("s") else "s") for shape in SHAPES}
NUMBER_WORDS = {2: "two", 3: "three", 4: "four"}
HARD_LAYOUT_WEIGHTS = {"row": 0.3, "column": 0.3, "overlap": 0.2, "corners": 0.2}
HARD_NUM_OBJECTS_WEIGHTS = {2: 0.3, 3: 0.35, 4: 0.35}
# How row / column scenes of n objects split into groups of identical objects (in order).
GROUPINGS = {
    2: ((1, 1),),
    3: ((1, 1, 1), (1, 2), (2, 1)),
    4: ((2, 2), (1, 3), (3, 1), (1, 1, 2), (1, 2, 1), (2, 1, 1)),
}
CORNERS = ("top left", "top right", "bottom left", "bottom right")  # canonical order
TEXTURES = ("plain", "stripes", "checks", "speckle")
OVERLAP_OFFSET = 0.3  # the hiding object's centre: this x the hidden one's side from its centre

_SHAPE_WORDS = {
    **{shape: (shape, False) for shape in SHAPES},
    **{plural: (shape, True) for shape, plural in PLURALS.items()},
}
_SIZE_WORDS = {word: size for size, words in SIZE_SYNONYMS.items() for word in words}
_COUNT_WORDS = {"a": 1, "an": 1, "one": 1, "single": 1} | {
    word: number for number, word in NUMBER_WORDS.items()
}


# --------------------------------------------------------------------------------------------
# Captions from a scene, and checking captions against it


def object_phrase(obj: dict[str, Any]) -> str:
    """ "small red circle": how captions name an object."""
    return f"{obj['size']} {obj['color']} {obj['shape']}"


def scene_captions(scene: dict[str, Any]) -> list[str]:
    """All reference captions of `scene`, in a fixed order (a function of the scene alone)."""
    if scene.get("preset") == "hard":
        return hard_scene_captions(scene)
    phrases = [object_phrase(obj) for obj in scene["objects"]]
    if len(phrases) == 1:
        templates = SINGLE_TEMPLATES
    elif len(phrases) == 2:
        templates = PAIR_TEMPLATES[scene["layout"]]
    else:
        templates = TRIPLE_TEMPLATES[scene["layout"]]
    return [template.format(*phrases) for template in templates]


def caption_names_objects_correctly(caption: str, scene: dict[str, Any]) -> bool:
    """Whether `caption` names exactly the scene's objects, each with the right size/colour/shape
    and, for identical objects named together, the right count ("two small red circles").

    Every shape word must come right after a size and a colour word ("small red circle"; the
    hard preset's synonyms "little" and "big" count as small and large); a plural shape needs a
    number word before them ("two", "three", "four"), a singular one stands for one object (and
    must not follow a number word above one). The named objects, counted, must equal the scene's
    as a multiset (none missing, none extra), and no size or colour word may stand outside such a
    phrase. Spatial relations are not checked (compare with `scene_captions` for that).
    """
    tokens = tokenize(caption)
    named: Counter[tuple[str, str, str]] = Counter()
    attributes_used = 0
    for index, token in enumerate(tokens):
        shape, plural = _SHAPE_WORDS.get(token, (None, False))
        if shape is None:
            continue
        if index < 2:
            return False
        size, color = _SIZE_WORDS.get(tokens[index - 2]), tokens[index - 1]
        if size is None or color not in ALL_COLORS:
            return False
        count = _COUNT_WORDS.get(tokens[index - 3]) if index >= 3 else None
        if plural and (count is None or count < 2):
            return False
        if not plural and count is not None and count > 1:
            return False
        named[(size, color, shape)] += count if plural else 1
        attributes_used += 2
    attribute_words = sum(token in _SIZE_WORDS or token in ALL_COLORS for token in tokens)
    expected = Counter((obj["size"], obj["color"], obj["shape"]) for obj in scene["objects"])
    return named == expected and attribute_words == attributes_used


# --------------------------------------------------------------------------------------------
# Drawing


def _shape_polygon(shape: str, x0: float, y0: float, side: float) -> list[tuple[float, float]]:
    """Corner points of a polygonal shape filling the square box (x0, y0, side)."""
    cx, cy, half = x0 + side / 2, y0 + side / 2, side / 2
    if shape == "triangle":
        return [(cx, y0), (x0 + side, y0 + side), (x0, y0 + side)]
    if shape == "diamond":
        return [(cx, y0), (x0 + side, cy), (cx, y0 + side), (x0, cy)]
    if shape == "star":  # five points, the top one up; inner radius 0.45 keeps the arms thick
        cy += 0.048 * side  # the star spans -0.5 .. +0.405 of its side: centre it vertically
        points = []
        for k in range(10):
            radius = half if k % 2 == 0 else 0.45 * half
            angle = math.pi * k / 5
            points.append((cx + radius * math.sin(angle), cy - radius * math.cos(angle)))
        return points
    if shape == "cross":  # a plus sign with arms a third of the side wide
        a, b = side / 3, 2 * side / 3
        offsets = [(a, 0), (b, 0), (b, a), (side, a), (side, b), (b, b)]
        offsets += [(b, side), (a, side), (a, b), (0, b), (0, a), (a, a)]
        return [(x0 + dx, y0 + dy) for dx, dy in offsets]
    raise ValueError(f"no polygon for shape {shape!r}")


def _draw_object(draw: ImageDraw.ImageDraw, obj: dict[str, Any], box: Sequence[float]) -> None:
    x0, y0, x1, _ = box
    color = ALL_COLORS[obj["color"]]
    if obj["shape"] == "circle":
        draw.ellipse(list(box), fill=color)
    elif obj["shape"] == "square":
        draw.rectangle(list(box), fill=color)
    else:
        draw.polygon(_shape_polygon(obj["shape"], x0, y0, x1 - x0), fill=color)


def _shifted(color: tuple[int, int, int], delta: int) -> tuple[int, int, int]:
    red, green, blue = (min(255, max(0, channel + delta)) for channel in color)
    return red, green, blue


def _background(rng: random.Random, name: str, canvas: int) -> Image.Image:
    """A soft gradient of the named colour in a random direction, with faint lines and dots."""
    base = BACKGROUNDS[name]
    spread = rng.randint(8, 16)
    dark = Image.new("RGB", (canvas, canvas), _shifted(base, -spread))
    light = Image.new("RGB", (canvas, canvas), _shifted(base, spread))
    mask = Image.linear_gradient("L").resize((canvas, canvas))
    turn = rng.choice([None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180])
    mask = mask if turn is None else mask.transpose(turn)
    image = Image.composite(light, dark, mask)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(2, 5)):  # clutter: thin low-contrast lines ...
        delta = rng.choice((-1, 1)) * rng.randint(14, 24)
        points = [rng.uniform(0, canvas) for _ in range(4)]
        draw.line(points, fill=_shifted(base, delta), width=SUPERSAMPLE)
    for _ in range(rng.randint(4, 12)):  # ... and dots, never captioned
        delta = rng.choice((-1, 1)) * rng.randint(14, 24)
        x, y, radius = rng.uniform(0, canvas), rng.uniform(0, canvas), rng.uniform(1, 2.5)
        radius *= SUPERSAMPLE
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=_shifted(base, delta))
    return image


# --------------------------------------------------------------------------------------------
# Scene generation


def _random_objects(rng: random.Random, count: int) -> list[dict[str, Any]]:
    """`count` distinct (size, colour, shape) objects, never three large (a row would not fit)."""
    while True:
        objects = [
            {
                "shape": rng.choice(SHAPES),
                "color": rng.choice(list(COLORS)),
                "size": rng.choice(list(SIZES)),
            }
            for _ in range(count)
        ]
        kinds = {object_phrase(obj) for obj in objects}
        if len(kinds) == count and sum(obj["size"] == "large" for obj in objects) < 3:
            return objects


def _place(rng: random.Random, sides: list[float], layout: str) -> list[tuple[float, float]]:
    """Box centres (x, y) in [0, 1] units for boxes of `sides`, in canonical order.

    Along the layout's axis the boxes follow each other with gaps of at least MIN_GAP, the spare
    room shared out at random; across it, each centre is offset from the previous one by at most
    MAX_CROSS_RATIO times their distance along the axis, so the relation is clear-cut.
    """

    def cross_range(side: float) -> tuple[float, float]:
        return MARGIN + side / 2, 1 - MARGIN - side / 2

    if layout == "single":
        lo, hi = cross_range(sides[0])
        return [(rng.uniform(lo, hi), rng.uniform(lo, hi))]
    spare = 1 - 2 * MARGIN - sum(sides) - MIN_GAP * (len(sides) - 1)
    weights = [rng.random() for _ in range(len(sides) + 1)]
    shares = [spare * weight / sum(weights) for weight in weights]
    along, position = [], MARGIN + shares[0]
    for index, side in enumerate(sides):
        along.append(position + side / 2)
        position += side + MIN_GAP + shares[index + 1]
    lo, hi = cross_range(sides[0])
    across = [rng.uniform(lo, hi)]
    for index in range(1, len(sides)):
        lo, hi = cross_range(sides[index])
        offset = rng.uniform(-MAX_CROSS_RATIO, MAX_CROSS_RATIO) * (along[index] - along[index - 1])
        across.append(min(hi, max(lo, across[-1] + offset)))
    return (
        list(zip(along, across, strict=True))
        if layout == "row"
        else list(zip(across, along, strict=True))
    )


def generate_scene(
    rng: random.Random, size: int = 96
) -> tuple[Image.Image, dict[str, Any], list[str]]:
    """Draw one random scene of `size` x `size` pixels from `rng`.

    Returns (RGB image, scene, captions). The scene dict holds "objects" in canonical order (each
    with "shape", "color", "size", "position" = centre [x, y] and "box" = [x0, y0, x1, y1], in
    pixels), "layout" (single / row / column), "relation" (None, "left of" or "above": how each
    object stands to the next), "background" and "image_size". The captions are
    `scene_captions(scene)`.
    """
    count = rng.choices(list(NUM_OBJECTS_WEIGHTS), weights=list(NUM_OBJECTS_WEIGHTS.values()))[0]
    layout = "single" if count == 1 else rng.choice(("row", "column"))
    objects = _random_objects(rng, count)
    sides = [SIZES[obj["size"]] for obj in objects]
    centres = _place(rng, sides, layout)
    background = rng.choice(list(BACKGROUNDS))
    canvas = size * SUPERSAMPLE
    image = _background(rng, background, canvas)
    draw = ImageDraw.Draw(image)
    for obj, side, (cx, cy) in zip(objects, sides, centres, strict=True):
        box = [(cx - side / 2), (cy - side / 2), (cx + side / 2), (cy + side / 2)]
        _draw_object(draw, obj, [value * canvas for value in box])
        obj["position"] = [round(cx * size), round(cy * size)]
        obj["box"] = [round(value * size) for value in box]
    scene = {
        "objects": objects,
        "layout": layout,
        "relation": RELATIONS[layout],
        "background": background,
        "image_size": size,
    }
    return image.reduce(SUPERSAMPLE), scene, scene_captions(scene)


def render_random_scene(
    seed: int, size: int = 96, preset: str = "demo"
) -> tuple[Image.Image, dict[str, Any], list[str]]:
    """`generate_scene` (or `generate_hard_scene` for ``preset="hard"``) with a fresh
    `random.Random(seed)`: the same seed draws the same scene."""
    return _generator(preset)(random.Random(seed), size)


SceneMaker = Callable[[random.Random, int], tuple[Image.Image, dict[str, Any], list[str]]]


def _generator(preset: str) -> SceneMaker:
    if preset not in PRESETS:
        raise UserError(f"--preset must be one of {', '.join(PRESETS)}, got {shown(preset)}")
    return generate_hard_scene if preset == "hard" else generate_scene


# --------------------------------------------------------------------------------------------
# The hard preset


def _noun(obj: dict[str, Any], count: int, variant: int) -> str:
    """ "a small red circle", "two little red circles": a group of ``count`` identical objects."""
    size = SIZE_SYNONYMS[obj["size"]][variant % 2]
    if count == 1:
        return f"a {size} {obj['color']} {obj['shape']}"
    return f"{NUMBER_WORDS[count]} {size} {obj['color']} {PLURALS[obj['shape']]}"


def _be(count: int) -> str:
    return "is" if count == 1 else "are"


def _join(items: Sequence[str]) -> str:
    """ "x", "x and y", "x, y and z"."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _groups(scene: dict[str, Any]) -> list[tuple[dict[str, Any], int]]:
    """(first object, count) of each group of identical objects, in canonical order."""
    groups: list[tuple[dict[str, Any], int]] = []
    for obj in scene["objects"]:
        if groups and obj["group"] == groups[-1][0]["group"]:
            groups[-1] = (groups[-1][0], groups[-1][1] + 1)
        else:
            groups.append((obj, 1))
    return groups


def hard_scene_captions(scene: dict[str, Any]) -> list[str]:
    """The five references of a hard-preset scene; reference i says "little" / "big" for odd i."""
    layout, captions = scene["layout"], []
    for variant in range(5):
        groups = _groups(scene)
        nouns = [_noun(obj, count, variant) for obj, count in groups]
        be = [_be(count) for _, count in groups]
        if layout in ("row", "column"):
            captions.append(_line_caption(layout, nouns, be, variant))
        elif layout == "overlap":
            captions.append(_overlap_caption(nouns, be, variant))
        else:
            corners = [obj["corner"] for obj, _ in groups]
            captions.append(_corners_caption(nouns, corners, variant))
    return captions


def _line_caption(layout: str, nouns: list[str], be: list[str], variant: int) -> str:
    row = layout == "row"
    before, after = ("to the left of", "to the right of") if row else ("above", "below")
    if len(nouns) == 2:
        a, b = nouns
        first, second = ("on the left", "on the right") if row else ("at the top", "at the bottom")
        return (
            f"{a} {before} {b}",
            f"{b} {after} {a}",
            f"there {be[0]} {a} {'left of' if row else 'above'} {b}",
            f"{a} {be[0]} {first} and {b} {be[1]} {second}",
            f"we can see {a} {first} and {b} {second}" if row else f"we can see {b} under {a}",
        )[variant]
    a, b, c = nouns
    order = "from left to right" if row else "from top to bottom"
    return (
        f"{a} {before} {b} {before} {c}",
        f"{c} {after} {b} {after} {a}",
        f"{order}, {a}, {b} and {c}",
        f"{a}, {b} and {c} {order}",
        f"this image contains {a}, {b} and {c} in a {layout}",
    )[variant]


def _overlap_caption(nouns: list[str], be: list[str], variant: int) -> str:
    front, back, *extra = nouns
    pairs = (
        f"{front} in front of {back}",
        f"{back} behind {front}",
        f"{front} partly covering {back}",
        f"{back} partly hidden by {front}",
        f"there is {front} overlapping {back}",
    )
    if not extra:
        return pairs[variant]
    (others,), others_be = extra, be[2]
    return (
        f"{pairs[0]} and {others}",
        f"{pairs[1]} and {others}",
        f"{pairs[2]} and {others}",
        f"{others} and {pairs[0]}",
        f"there {others_be} {others} and {pairs[3]}",
    )[variant]


def _corners_caption(nouns: list[str], corners: list[str], variant: int) -> str:
    places = list(zip(nouns, corners, strict=True))
    if variant == 0:
        return _join([f"{noun} in the {corner} corner" for noun, corner in places])
    if variant == 1:
        return "there is " + _join([f"{noun} in the {corner} corner" for noun, corner in places])
    if variant == 2:
        return _join([f"{noun} at the {corner}" for noun, corner in places])
    if variant == 3:
        upper = {"top": "upper", "bottom": "lower"}
        return _join(
            [
                f"in the {upper[corner.split()[0]]} {corner.split()[1]} corner {noun}"
                for noun, corner in places
            ]
        )
    return "we see " + _join([f"{noun} at the {corner}" for noun, corner in places])


class _NoRoom(Exception):
    """The drawn sizes do not fit the layout: draw again."""


def _hard_kinds(
    rng: random.Random, count: int, sizes: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """``count`` objects of different kinds (size, colour, shape)."""
    while True:
        kinds = [
            {
                "shape": rng.choice(SHAPES),
                "color": rng.choice(list(HARD_COLORS)),
                "size": sizes[index] if sizes else rng.choice(list(HARD_SIZES)),
            }
            for index in range(count)
        ]
        if len({object_phrase(kind) for kind in kinds}) == count:
            return kinds


def _hard_line(rng: random.Random, layout: str, count: int) -> list[dict[str, Any]]:
    """A row or column of 2-3 groups of identical objects; boxes apart along the axis."""
    grouping = rng.choice(GROUPINGS[count])
    kinds = _hard_kinds(rng, len(grouping))
    objects = [
        dict(kind, group=index)
        for index, (kind, n) in enumerate(zip(kinds, grouping, strict=True))
        for _ in range(n)
    ]
    sides = [HARD_SIZES[obj["size"]] for obj in objects]
    if sum(sides) + MIN_GAP * (len(sides) - 1) + 2 * MARGIN > 1:
        raise _NoRoom
    for obj, (cx, cy), side in zip(objects, _place(rng, sides, layout), sides, strict=True):
        obj["box01"] = [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]
    return objects


def _overlaps(box: Sequence[float], other: Sequence[float], gap: float) -> bool:
    return not (
        box[2] + gap <= other[0]
        or other[2] + gap <= box[0]
        or box[3] + gap <= other[1]
        or other[3] + gap <= box[1]
    )


def _square(cx: float, cy: float, side: float) -> list[float]:
    return [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]


def _inside(box: Sequence[float]) -> bool:
    return MARGIN <= box[0] and MARGIN <= box[1] and box[2] <= 1 - MARGIN and box[3] <= 1 - MARGIN


def _hard_overlap(rng: random.Random, count: int) -> list[dict[str, Any]]:
    """A small object partly hiding a large one of another colour (its centre on the large one's
    edge or corner), and count - 2 identical others elsewhere, apart from both."""
    while True:
        front, back = _hard_kinds(rng, 2, ["small", "large"])
        if front["color"] != back["color"]:
            break
    extra = []
    if count > 2:
        while True:
            [kind] = _hard_kinds(rng, 1)
            if object_phrase(kind) not in {object_phrase(front), object_phrase(back)}:
                break
        extra = [dict(kind, group=2) for _ in range(count - 2)]
    big, small = HARD_SIZES["large"], HARD_SIZES["small"]
    low, high = MARGIN + big / 2, 1 - MARGIN - big / 2
    cx, cy = rng.uniform(low, high), rng.uniform(low, high)
    # The small one's centre lies on the large shape (0.3 of its side from the centre, any
    # direction), so that it hides part of it and the large one stays recognisable.
    angle = rng.uniform(0, 2 * math.pi)
    back["box01"] = _square(cx, cy, big)
    front["box01"] = _square(
        cx + OVERLAP_OFFSET * big * math.cos(angle),
        cy + OVERLAP_OFFSET * big * math.sin(angle),
        small,
    )
    if not _inside(front["box01"]):
        raise _NoRoom
    union = [min(a, b) for a, b in zip(back["box01"][:2], front["box01"][:2], strict=True)]
    union += [max(a, b) for a, b in zip(back["box01"][2:], front["box01"][2:], strict=True)]
    taken = [union]
    for obj in extra:
        side = HARD_SIZES[obj["size"]]
        for _ in range(100):
            box = _square(
                rng.uniform(MARGIN + side / 2, 1 - MARGIN - side / 2),
                rng.uniform(MARGIN + side / 2, 1 - MARGIN - side / 2),
                side,
            )
            if not any(_overlaps(box, other, MIN_GAP) for other in taken):
                break
        else:
            raise _NoRoom
        obj["box01"] = box
        taken.append(box)
    return [dict(front, group=0), dict(back, group=1), *extra]


def _hard_corners(rng: random.Random, count: int) -> list[dict[str, Any]]:
    """2-3 objects of different kinds, each inside its own quarter of the image."""
    corners = sorted(rng.sample(range(4), min(count, 3)))
    objects = []
    for index, (kind, corner) in enumerate(
        zip(_hard_kinds(rng, len(corners)), corners, strict=True)
    ):
        side = HARD_SIZES[kind["size"]]
        x_lo = MARGIN if corner % 2 == 0 else 0.5 + MIN_GAP / 2
        y_lo = MARGIN if corner < 2 else 0.5 + MIN_GAP / 2
        span = 0.5 - MARGIN - MIN_GAP / 2 - side  # room for the box inside the quarter
        x0, y0 = x_lo + rng.uniform(0, span), y_lo + rng.uniform(0, span)
        objects.append(
            dict(kind, group=index, corner=CORNERS[corner], box01=[x0, y0, x0 + side, y0 + side])
        )
    return objects


def _hard_background(rng: random.Random, name: str, canvas: int) -> tuple[Image.Image, str]:
    """The demo background plus a low-contrast texture and faint outlines of shapes."""
    image = _background(rng, name, canvas)
    base = BACKGROUNDS[name]
    draw = ImageDraw.Draw(image)
    texture = rng.choice(TEXTURES)
    shade = _shifted(base, rng.choice((-1, 1)) * rng.randint(10, 18))
    if texture == "stripes":
        period = rng.randint(6, 14) * SUPERSAMPLE
        slope = rng.choice((0, 1, -1))  # horizontal, or diagonal either way
        for offset in range(-canvas, 2 * canvas, period):
            if slope == 0:
                draw.line([0, offset, canvas, offset], fill=shade, width=2 * SUPERSAMPLE)
            else:
                draw.line(
                    [0, offset, canvas, offset + slope * canvas], fill=shade, width=2 * SUPERSAMPLE
                )
    elif texture == "checks":
        cell = rng.randint(8, 16) * SUPERSAMPLE
        for top in range(0, canvas, cell):
            for left in range((top // cell) % 2 * cell, canvas, 2 * cell):
                draw.rectangle([left, top, left + cell - 1, top + cell - 1], fill=shade)
    elif texture == "speckle":
        for _ in range(rng.randint(60, 140)):
            x, y = rng.uniform(0, canvas), rng.uniform(0, canvas)
            radius = rng.uniform(0.5, 1.5) * SUPERSAMPLE
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=shade)
    for _ in range(rng.randint(0, 2)):  # distractors: outlines of shapes, never captioned
        side = rng.uniform(0.12, 0.3) * canvas
        x0, y0 = rng.uniform(0, canvas - side), rng.uniform(0, canvas - side)
        outline = _shifted(base, rng.choice((-1, 1)) * rng.randint(22, 32))
        shape = rng.choice(SHAPES)
        if shape == "circle":
            draw.ellipse([x0, y0, x0 + side, y0 + side], outline=outline, width=SUPERSAMPLE)
        elif shape == "square":
            draw.rectangle([x0, y0, x0 + side, y0 + side], outline=outline, width=SUPERSAMPLE)
        else:
            points = _shape_polygon(shape, x0, y0, side)
            draw.line([*points, points[0]], fill=outline, width=SUPERSAMPLE)
    return image, texture


def generate_hard_scene(
    rng: random.Random, size: int = 96
) -> tuple[Image.Image, dict[str, Any], list[str]]:
    """Draw one scene of the hard preset from `rng`: (RGB image, scene, captions).

    Layouts: "row" / "column" (2-4 objects in 2-3 groups of identical objects, each group apart
    from the next along the axis, as in the demo preset), "overlap" (a small object in front of a
    large one, its centre on the large one's edge or corner, plus 0-2 identical others apart from
    both), "corners" (2-3 objects, each in its own quarter of the image). The scene dict holds
    "preset": "hard", "layout", "objects" in canonical order (each with "shape", "color", "size",
    "group" (identical objects share one), "position", "box" in pixels, and "corner" for the
    corners layout), "background", "texture" and "image_size". The captions are
    `hard_scene_captions(scene)`.
    """
    layout = rng.choices(list(HARD_LAYOUT_WEIGHTS), weights=list(HARD_LAYOUT_WEIGHTS.values()))[0]
    count = rng.choices(
        list(HARD_NUM_OBJECTS_WEIGHTS), weights=list(HARD_NUM_OBJECTS_WEIGHTS.values())
    )[0]
    while True:
        try:
            if layout in ("row", "column"):
                objects = _hard_line(rng, layout, count)
            elif layout == "overlap":
                objects = _hard_overlap(rng, count)
            else:
                objects = _hard_corners(rng, count)
            break
        except _NoRoom:
            continue
    background = rng.choice(list(BACKGROUNDS))
    canvas = size * SUPERSAMPLE
    image, texture = _hard_background(rng, background, canvas)
    draw = ImageDraw.Draw(image)
    for obj in (objects[1], objects[0], *objects[2:]) if layout == "overlap" else objects:
        _draw_object(draw, obj, [value * canvas for value in obj["box01"]])
    for obj in objects:
        box = obj.pop("box01")
        obj["position"] = [round((box[0] + box[2]) / 2 * size), round((box[1] + box[3]) / 2 * size)]
        obj["box"] = [round(value * size) for value in box]
    scene = {
        "preset": "hard",
        "objects": objects,
        "layout": layout,
        "background": background,
        "texture": texture,
        "image_size": size,
    }
    return image.reduce(SUPERSAMPLE), scene, hard_scene_captions(scene)


def _check_size(size: int) -> None:
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise UserError(
            f"--size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {size}"
            + ("; smaller images make small shapes unrecognisable" if size < MIN_SIZE else "")
        )


def generate_dataset(
    out: str | os.PathLike[str],
    num_images: int,
    *,
    seed: int = 0,
    size: int = 96,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    preset: str = "demo",
) -> Path:
    """Write `num_images` scenes of ``preset`` ("demo" or "hard") to out/images/ and
    out/dataset_scenes.json; return the JSON path.

    Image i is drawn from its own `random.Random(f"{seed}:{i}")`, so a larger data set with the
    same seed starts with the same images. Splits are `exact_split` of the file names in a
    `random.Random(seed)` shuffle.
    """
    generate = _generator(preset)
    if num_images < 1:
        raise UserError(f"--num-images must be at least 1, got {num_images}")
    _check_size(size)
    validate_fractions(val_fraction, test_fraction)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out '{out}' is a file; pass a folder for the data set")
    # one command at a time writes a folder: two interleaved their images under one's JSON
    lock = f".{JSON_NAME}.lock"
    hold(
        out,
        lambda holder: UserError(
            f"--out '{out}' is being written by another captioner.scenes command ({holder}); "
            "wait for it to end, or pass another --out"
        ),
        name=lock,
    )
    try:
        return _write_dataset(out, num_images, generate, seed, size, val_fraction, test_fraction)
    finally:
        release(out, lock)


def _write_dataset(
    out: Path,
    num_images: int,
    generate: SceneMaker,
    seed: int,
    size: int,
    val_fraction: float,
    test_fraction: float,
) -> Path:
    """`generate_dataset`'s writing, in a folder it holds."""
    image_dir = out / IMAGE_FOLDER
    image_dir.mkdir(parents=True, exist_ok=True)
    json_path = out / JSON_NAME
    # An earlier data set's captions go before its images are overwritten: an interrupted run
    # leaves no JSON (loaders refuse the folder) rather than old captions beside new pictures.
    json_path.unlink(missing_ok=True)
    names = [f"{index:06d}.png" for index in range(num_images)]
    # exact counts over a seeded shuffle: a generated set is written whole, its splits into its
    # JSON, and its benchmarks quote test sets of known sizes (data that grows is split by hash)
    order = sorted(names)
    random.Random(seed).shuffle(order)
    splits = exact_split(order, val_fraction, test_fraction)
    entries, sentence_id = [], 0
    for index, name in enumerate(names):
        image, scene, captions = generate(random.Random(f"{seed}:{index}"), size)
        _save_image(image, image_dir / name)
        sentences = [
            {"tokens": tokenize(caption), "raw": caption, "imgid": index, "sentid": sentence_id + k}
            for k, caption in enumerate(captions)
        ]
        entries.append(
            {
                "filepath": IMAGE_FOLDER,
                "filename": name,
                "imgid": index,
                "split": splits[name],
                "sentids": [sentence["sentid"] for sentence in sentences],
                "sentences": sentences,
                "scene": scene,
            }
        )
        sentence_id += len(sentences)
    # never a half-written JSON behind
    atomic_write_text(json_path, json.dumps({"dataset": "scenes", "images": entries}))
    return json_path


def _save_image(image: Image.Image, path: Path) -> None:
    """``image.save(path)``; a write the system refuses (a full disk: PIL's error names no file)
    names ``path`` and leaves no half-written image."""
    try:
        image.save(path)
    except OSError as err:
        path.unlink(missing_ok=True)
        raise named(err, path) from None


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: generate a scenes data set (see the module docstring)."""
    parser = ArgumentParser(
        prog="python -m captioner.scenes",
        description="Generate the synthetic scenes captioning data set (PNG images plus a "
        "Karpathy-format dataset_scenes.json).",
    )
    parser.add_argument("--out", required=True, help="folder to write images/ and the JSON into")
    parser.add_argument(
        "--num-images", type=int, default=2000, help="number of images (default: 2000)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed; the same seed gives identical files"
    )
    parser.add_argument(
        "--size",
        type=int,
        default=96,
        help=f"image side in pixels, {MIN_SIZE} to {MAX_SIZE} (default: 96)",
    )
    parser.add_argument(
        "--preset",
        default="demo",
        choices=PRESETS,
        help="demo: 1-3 shapes, the bundled model's data; hard: 2-4 shapes with counting, "
        "occlusion, corners and textured backgrounds, a benchmark that is not saturated "
        "(default: demo)",
    )
    parser.add_argument(
        "--val-fraction", type=float, default=0.1, help="share of images in val (default: 0.1)"
    )
    parser.add_argument(
        "--test-fraction", type=float, default=0.1, help="share of images in test (default: 0.1)"
    )
    args = parser.parse_args(argv)
    if not args.out.strip():
        raise UserError("--out is empty; name the folder to write the scenes into")
    json_path = generate_dataset(
        args.out,
        args.num_images,
        seed=args.seed,
        size=args.size,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        preset=args.preset,
    )
    print(f"wrote {args.num_images} images to {Path(args.out) / IMAGE_FOLDER} and {json_path}")


def cli() -> None:
    """Console-script entry point: a user mistake becomes one line on stderr, exit status 2."""
    raise SystemExit(run_cli(main))


if __name__ == "__main__":
    cli()
