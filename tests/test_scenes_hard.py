"""The hard preset of the synthetic scenes: determinism, geometry against the ground truth, counted
captions, and the "names every object correctly" check with counts."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from captioner import scenes
from captioner.config import CaptionerConfig, check_config, describe_data
from captioner.data import load_records, select_split, tokenize
from recurrent.config import load_config, to_dict
from recurrent.errors import UserError

SEEDS = range(200)


def hard(seed: int, size: int = 96):
    return scenes.render_random_scene(seed, size, preset="hard")


def test_hard_scenes_are_deterministic_and_differ_from_the_demo_preset():
    image, scene, captions = hard(11)
    again = hard(11)
    assert image.tobytes() == again[0].tobytes() and scene == again[1] and captions == again[2]
    demo = scenes.render_random_scene(11, 96)
    assert demo[1].get("preset") is None and image.tobytes() != demo[0].tobytes()


def test_hard_dataset_is_byte_identical_and_loads(tmp_path: Path):
    args = ["--num-images", "6", "--seed", "2", "--size", "48", "--preset", "hard"]
    scenes.main([*args, "--out", str(tmp_path / "one")])
    scenes.main([*args, "--out", str(tmp_path / "two")])
    first, second = (tmp_path / name / scenes.JSON_NAME for name in ("one", "two"))
    assert first.read_bytes() == second.read_bytes()
    for path in sorted((tmp_path / "one" / "images").iterdir()):
        assert path.read_bytes() == (tmp_path / "two" / "images" / path.name).read_bytes()
    records = load_records("karpathy", first, None)
    assert len(records) == 6 and all(record.meta["preset"] == "hard" for record in records)
    assert select_split(records, "train")
    entry = json.loads(first.read_text())["images"][0]
    assert [s["raw"] for s in entry["sentences"]] == scenes.scene_captions(entry["scene"])
    with pytest.raises(UserError, match="preset"):
        scenes.generate_dataset(tmp_path / "bad", 2, preset="extreme")


def test_hard_scene_geometry_matches_the_ground_truth():
    layouts, counts = Counter(), Counter()
    for seed in SEEDS:
        image, scene, captions = hard(seed)
        objects, layout = scene["objects"], scene["layout"]
        layouts[layout] += 1
        counts[len(objects)] += 1
        assert 2 <= len(objects) <= 4 and len(captions) == 5
        boxes = [obj["box"] for obj in objects]
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 96
        visible = objects if layout != "overlap" else [objects[0], *objects[2:]]
        for obj in visible:  # the centre pixel shows the object's colour (nothing covers it)
            assert image.getpixel(tuple(obj["position"])) == scenes.ALL_COLORS[obj["color"]]
        if layout in ("row", "column"):
            axis = 0 if layout == "row" else 1
            for first, second in zip(boxes, boxes[1:], strict=False):
                assert second[axis] > first[axis + 2]  # apart along the axis, in order
        elif layout == "overlap":
            front, back, *extra = boxes
            assert _intersect(front, back) and objects[0]["size"] == "small"
            assert objects[0]["color"] != objects[1]["color"]
            for index, box in enumerate(extra):
                assert not any(_intersect(box, other) for other in [front, back, *extra[:index]])
        else:
            for obj in objects:
                vertical, horizontal = obj["corner"].split()
                x0, y0, x1, y1 = obj["box"]
                assert (x1 <= 48) if horizontal == "left" else (x0 >= 48)
                assert (y1 <= 48) if vertical == "top" else (y0 >= 48)
    assert set(layouts) == {"row", "column", "overlap", "corners"}
    assert set(counts) == {2, 3, 4}


def _intersect(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_identical_objects_are_counted_and_named_correctly():
    counted = 0
    for seed in SEEDS:
        _, scene, captions = hard(seed)
        kinds = Counter(scenes.object_phrase(obj) for obj in scene["objects"])
        assert all(scenes.caption_names_objects_correctly(c, scene) for c in captions)
        for kind, number in kinds.items():
            if number > 1:
                counted += 1
                size, color, shape = kind.split()
                word = scenes.NUMBER_WORDS[number]
                assert f"{word} {size} {color} {scenes.PLURALS[shape]}" in captions[0]
                wrong = scenes.NUMBER_WORDS[2 if number > 2 else 3]
                miscounted = captions[0].replace(f"{word} {size}", f"{wrong} {size}", 1)
                assert not scenes.caption_names_objects_correctly(miscounted, scene)
                singular = captions[0].replace(
                    f"{word} {size} {color} {scenes.PLURALS[shape]}", f"a {size} {color} {shape}"
                )
                assert not scenes.caption_names_objects_correctly(singular, scene)
        first = scene["objects"][0]
        wrong = "red" if first["color"] != "red" else "cyan"
        recoloured = captions[0].replace(
            f"{first['size']} {first['color']}", f"{first['size']} {wrong}", 1
        )
        assert not scenes.caption_names_objects_correctly(recoloured, scene)
        assert not scenes.caption_names_objects_correctly(
            captions[0] + " and a big pink star", scene
        )
    assert counted > 20


def test_checker_reads_synonyms_and_counts():
    scene = {
        "objects": [
            {"size": "small", "color": "red", "shape": "circle"},
            {"size": "small", "color": "red", "shape": "circle"},
            {"size": "large", "color": "cyan", "shape": "cross"},
        ]
    }
    check = scenes.caption_names_objects_correctly
    assert check("two little red circles to the left of a big cyan cross", scene)
    assert check("a large cyan cross and two small red circles", scene)
    assert not check("a little red circle left of a big cyan cross", scene)  # one missing
    assert not check("two little red circle left of a big cyan cross", scene)  # singular
    assert not check("red circles and a big cyan cross", scene)  # no size, no count
    assert not check("two little red circles, a big cyan cross and a red patch", scene)


def test_hard_vocabulary_and_caption_lengths():
    words, lengths = Counter(), []
    for seed in SEEDS:
        for caption in hard(seed)[2]:
            tokens = tokenize(caption)
            words.update(tokens)
            lengths.append(len(tokens))
    assert 60 <= len(words) <= 110
    assert {"two", "three", "behind", "corner", "little", "crosses", "pink"} <= set(words)
    assert max(lengths) <= 32


def test_hard_config_mirrors_the_dataclass_key_for_key():
    path = Path(__file__).resolve().parents[1] / "configs" / "captioner" / "scenes_hard.yaml"
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    expected = to_dict(CaptionerConfig())
    assert raw.keys() == expected.keys()
    for section, fields in expected.items():
        assert set(raw[section]) == set(fields), (section, set(raw[section]) ^ set(fields))
    cfg = load_config(CaptionerConfig, path)
    check_config(cfg)
    assert cfg.data.max_caption_length >= 30 and cfg.decode.max_length >= 30


@pytest.mark.parametrize("preset", ["demo", "hard"])
def test_sentence_ids_are_unique_across_the_data_set(preset, tmp_path: Path):
    """Karpathy's files number every sentence of the data set once (sentid) and list each image's
    in its sentids; a sentid given twice would make two captions one for tools keyed on it."""
    path = scenes.generate_dataset(tmp_path, 5, seed=3, size=scenes.MIN_SIZE, preset=preset)
    images = json.loads(path.read_text())["images"]
    sentids = [s["sentid"] for entry in images for s in entry["sentences"]]
    assert sentids == list(range(len(sentids))) and len(sentids) > len(images)
    for index, entry in enumerate(images):
        assert entry["imgid"] == index and {s["imgid"] for s in entry["sentences"]} == {index}
        assert entry["sentids"] == [s["sentid"] for s in entry["sentences"]]


def test_the_card_names_the_scenes_only_when_every_annotation_file_is_theirs():
    """A model card says "synthetic scenes" for the scenes' JSON alone (or twice), not when a
    second file of other data joins it: then it is named after its first file, as any data is."""
    scenes_json = f"data/scenes/{scenes.JSON_NAME}"
    for given in (scenes_json, [scenes_json], [scenes_json, f"other/{scenes.JSON_NAME}"]):
        card = describe_data({"format": "karpathy", "annotations": given})
        assert card["synthetic_scenes"] and card["name"] == "synthetic scenes (coloured shapes)"
        assert card["path"] == (given if isinstance(given, str) else ", ".join(given))
    for files, name in [
        ([scenes_json, "data/dataset_flickr8k.json"], "scenes"),
        (["data/dataset_flickr8k.json", scenes_json], "flickr8k"),
        (["data/captions.csv"], "captions"),
    ]:
        card = describe_data({"format": "karpathy", "annotations": files})
        assert not card["synthetic_scenes"] and card["name"] == name
        assert card["path"] == ", ".join(files)
    assert describe_data({"format": "coco", "annotations": ""})["name"] == "coco"
