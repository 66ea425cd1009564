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

`python -m captioner.scenes --out DIR --num-images N --seed S` writes DIR/images/*.png and
DIR/dataset_scenes.json in the Karpathy split format, with each image's ground truth under the
extra key "scene", so the generic karpathy loader reads it (`load_records("karpathy", json)`).
The same seed gives byte-identical images and JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from captioner.data.formats import seeded_split, validate_fractions
from captioner.data.vocab import tokenize
from recurrent.errors import UserError, run_cli

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


# --------------------------------------------------------------------------------------------
# Captions from a scene, and checking captions against it


def object_phrase(obj: dict[str, Any]) -> str:
    """ "small red circle": how captions name an object."""
    return f"{obj['size']} {obj['color']} {obj['shape']}"


def scene_captions(scene: dict[str, Any]) -> list[str]:
    """All reference captions of `scene`, in a fixed order (a function of the scene alone)."""
    phrases = [object_phrase(obj) for obj in scene["objects"]]
    if len(phrases) == 1:
        templates = SINGLE_TEMPLATES
    elif len(phrases) == 2:
        templates = PAIR_TEMPLATES[scene["layout"]]
    else:
        templates = TRIPLE_TEMPLATES[scene["layout"]]
    return [template.format(*phrases) for template in templates]


def caption_names_objects_correctly(caption: str, scene: dict[str, Any]) -> bool:
    """Whether `caption` names exactly the scene's objects, each with the right size/colour/shape.

    Every shape word must come right after its size and colour ("small red circle"), the named
    (size, colour, shape) triples must equal the scene's objects (as a multiset: none missing,
    none extra), and no size or colour word may stand outside such a triple. Spatial relations are
    not checked (compare with `scene_captions` for that).
    """
    tokens = tokenize(caption)
    named = [
        (tokens[i - 2] if i >= 2 else None, tokens[i - 1] if i >= 1 else None, token)
        for i, token in enumerate(tokens)
        if token in SHAPES
    ]
    attribute_words = sum(token in SIZES or token in COLORS for token in tokens)
    expected = Counter((obj["size"], obj["color"], obj["shape"]) for obj in scene["objects"])
    return Counter(named) == expected and attribute_words == 2 * len(named)


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
    color = COLORS[obj["color"]]
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


def render_random_scene(seed: int, size: int = 96) -> tuple[Image.Image, dict[str, Any], list[str]]:
    """`generate_scene` with a fresh `random.Random(seed)`: the same seed draws the same scene."""
    return generate_scene(random.Random(seed), size)


def _check_size(size: int) -> None:
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise UserError(
            f"--size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {size}; "
            "smaller images make small shapes unrecognisable"
        )


def generate_dataset(
    out: str | os.PathLike[str],
    num_images: int,
    *,
    seed: int = 0,
    size: int = 96,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> Path:
    """Write `num_images` scenes to out/images/ and out/dataset_scenes.json; return the JSON path.

    Image i is drawn from its own `random.Random(f"{seed}:{i}")`, so a larger data set with the
    same seed starts with the same images. Splits are `seeded_split` over the file names.
    """
    if num_images < 1:
        raise UserError(f"--num-images must be at least 1, got {num_images}")
    _check_size(size)
    validate_fractions(val_fraction, test_fraction)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out '{out}' is a file; pass a folder for the data set")
    image_dir = out / IMAGE_FOLDER
    image_dir.mkdir(parents=True, exist_ok=True)
    names = [f"{index:06d}.png" for index in range(num_images)]
    splits = seeded_split(names, val_fraction, test_fraction, seed)
    entries, sentence_id = [], 0
    for index, name in enumerate(names):
        image, scene, captions = generate_scene(random.Random(f"{seed}:{index}"), size)
        image.save(image_dir / name)
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
    json_path = out / JSON_NAME
    partial = json_path.with_name(json_path.name + ".partial")
    partial.write_text(json.dumps({"dataset": "scenes", "images": entries}), encoding="utf-8")
    os.replace(partial, json_path)  # never leave a half-written JSON behind
    return json_path


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: generate a scenes data set (see the module docstring)."""
    parser = argparse.ArgumentParser(
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
    parser.add_argument("--size", type=int, default=96, help="image side in pixels (default: 96)")
    parser.add_argument(
        "--val-fraction", type=float, default=0.1, help="share of images in val (default: 0.1)"
    )
    parser.add_argument(
        "--test-fraction", type=float, default=0.1, help="share of images in test (default: 0.1)"
    )
    args = parser.parse_args(argv)
    json_path = generate_dataset(
        args.out,
        args.num_images,
        seed=args.seed,
        size=args.size,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
    )
    print(f"wrote {args.num_images} images to {Path(args.out) / IMAGE_FOLDER} and {json_path}")


def cli() -> None:
    """Console-script entry point: a user mistake becomes one line on stderr, exit status 2."""
    raise SystemExit(run_cli(main))


if __name__ == "__main__":
    cli()
