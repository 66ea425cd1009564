"""The Streamlit app (app.py) driven in-process with `streamlit.testing.v1.AppTest`.

A module fixture trains tiny models with the library (two captioners, with and without attention,
on conftest's small scenes set, and a character LM on a short text) into a temporary models
directory, beside a broken .pt, a foreign .pt and a symlink to a checkpoint outside the directory.
The app is pointed at it through $CRNN_MODELS_DIR. What the pages show is compared with what the library computes for the same
input and settings; every bad input must show a message, never an exception.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence
from streamlit.testing.v1 import AppTest
from tiny_models import train_tiny_captioner, train_tiny_char_lm

import captioner.inference as inference
import crnn_app.heatmap as heatmap
from captioner import caption
from captioner.data.images import load_image
from captioner.ensemble import load_ensemble
from captioner.inference import caption_images, load_captioner
from captioner.scenes import (
    MAX_SIZE,
    MIN_SIZE,
    caption_names_objects_correctly,
    render_random_scene,
    scene_captions,
)
from char_lm.generate import generate, load_char_lm, trained_precision
from crnn_app.captioning import scene_size
from crnn_app.cards import escape_markdown
from crnn_app.heatmap import attention_overlay, attention_overlays, colormap
from crnn_app.models_dir import (
    ENV_VAR,
    check_models_dir,
    checkpoint_path,
    file_key,
    list_checkpoints,
    parse_app_args,
)
from recurrent.checkpoint import load_checkpoint, save_checkpoint
from recurrent.errors import UserError, run_cli

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "app.py")
TIMEOUT = 60  # seconds per script run: the machine is small and shared


@pytest.fixture(scope="module")
def models(
    tmp_path_factory: pytest.TempPathFactory, scenes_annotations: Path, one_thread: None
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("app")
    models_dir = root / "models"
    models_dir.mkdir()
    captioner = train_tiny_captioner(models_dir / "scenes_run", scenes_annotations)
    show_and_tell = train_tiny_captioner(
        models_dir / "zz_no_attention",
        scenes_annotations,
        "model.attention=false",
        "train.max_steps=1",
    )
    char_lm = train_tiny_char_lm(models_dir / "text_run", root / "text.txt")
    (models_dir / "broken.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    torch.save({"x": 1}, models_dir / "foreign.pt")
    outside = root / "outside" / "elsewhere.pt"
    outside.parent.mkdir()
    shutil.copy(char_lm, outside)
    (models_dir / "outside.pt").symlink_to(outside)
    return {
        "dir": models_dir,
        "captioner": captioner,
        "show_and_tell": show_and_tell,
        "char_lm": char_lm,
        "outside": outside,
    }


@pytest.fixture
def app(models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv(ENV_VAR, str(models["dir"]))
    monkeypatch.setattr(sys, "argv", ["app.py"])  # not pytest's argv
    return AppTest.from_file(APP, default_timeout=TIMEOUT)


def _run(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [item.value for item in at.exception]
    return at


def _messages(elements) -> list[str]:
    return [element.value for element in elements]


def _beams(at: AppTest) -> list[tuple[str, float, str]]:
    frame = at.table[0].value
    return list(zip(frame["caption"], frame["log-probability"], frame["ended"], strict=True))


def _expected_beams(result) -> list[tuple[str, float, str]]:
    """The beams table's rows for ``result``: its captions as the table's Markdown writes them (a
    caption of an unknown word holds ``<unk>``)."""
    return [
        (
            escape_markdown(text),
            round(logprob, 4),
            "yes" if ended else "no: cut at the length limit",
        )
        for (text, logprob), ended in zip(result.beams, result.finished, strict=True)
    ]


# --------------------------------------------------------------------------------------------
# Images the user may upload


def _scene(seed: int, size: int = 64) -> Image.Image:
    return render_random_scene(seed, size)[0]


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _animated_gif() -> bytes:
    first, second = _scene(1), _scene(2)
    buffer = io.BytesIO()
    first.save(buffer, format="GIF", save_all=True, append_images=[second], duration=200, loop=0)
    return buffer.getvalue()


def _sixteen_bit_png() -> bytes:
    gray = np.asarray(_scene(3).convert("L"), dtype=np.uint16) * 257  # full 16-bit range
    return _encode(Image.fromarray(gray), "PNG")


def _rgba_png() -> bytes:
    rgba = _scene(4).convert("RGBA")
    alpha = Image.linear_gradient("L").resize(rgba.size)
    rgba.putalpha(alpha)
    return _encode(rgba, "PNG")


def _exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    return _encode(_scene(5).resize((64, 48)), "JPEG", quality=95, exif=exif)


GOOD_UPLOADS = {
    "scene.png": lambda: _encode(_scene(10), "PNG"),
    "scene.jpg": lambda: _encode(_scene(11), "JPEG", quality=95),
    "scene.webp": lambda: _encode(_scene(12), "WEBP", lossless=True),
    "scene.bmp": lambda: _encode(_scene(13), "BMP"),
    "animated.gif": _animated_gif,
    "cmyk.jpg": lambda: _encode(_scene(14).convert("CMYK"), "JPEG", quality=95),
    "sixteen_bit.png": _sixteen_bit_png,
    "rgba.png": _rgba_png,
    "palette.png": lambda: _encode(_scene(15).convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
    "gray.png": lambda: _encode(_scene(16).convert("L"), "PNG"),
    "exif_rotated.jpg": _exif_rotated_jpeg,
}


def _decompression_bomb_png() -> bytes:
    """A valid PNG whose header claims 40000 x 40000 pixels (its data stays tiny)."""
    data = bytearray(_encode(Image.new("L", (1, 1)), "PNG"))
    header = struct.pack(">II", 40_000, 40_000) + bytes(data[24:29])  # IHDR fields after the size
    data[16:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + header))
    return bytes(data)


BAD_UPLOADS = {
    "notes.png": (lambda: b"these are notes, not pixels\n" * 10, "not an image"),
    "truncated.png": (lambda: _encode(_scene(20), "PNG")[:600], "truncated"),
    "corrupt.jpg": (  # older Pillows (11.3 too) do not identify it: "not an image", also true
        lambda: _encode(_scene(21), "JPEG")[:200] + b"\x00garbage" * 50,
        "corrupt or truncated|not an image Pillow can decode",
    ),
    "bomb.png": (_decompression_bomb_png, "pixels"),
}


def _mime(name: str) -> str:
    suffix = name.rsplit(".", 1)[-1]
    return {"jpg": "image/jpeg", "png": "image/png"}.get(suffix, f"image/{suffix}")


# --------------------------------------------------------------------------------------------
# Caption page


def test_caption_page_lists_checkpoints_and_skips_bad_files(
    app: AppTest, models: dict[str, Path]
) -> None:
    at = _run(app)
    assert at.radio(key="page").value == "Caption an image"
    assert at.selectbox(key="captioner_checkpoint").options == [
        "scenes_run/best.pt",
        "scenes_run/last.pt",
        "zz_no_attention/best.pt",
        "zz_no_attention/last.pt",
    ]
    skipped = _messages(at.text)
    assert any(line.startswith("skipped: broken.pt: ") for line in skipped), skipped
    assert any(line.startswith("skipped: foreign.pt: ") for line in skipped), skipped
    assert any(
        line.startswith("skipped: outside.pt: ") and "outside the models directory" in line
        for line in skipped
    ), skipped
    assert "Upload an image or draw a random scene" in " ".join(_messages(at.info))
    assert not at.error
    # the sidebar starts at the checkpoint's own decoding settings
    decode = load_checkpoint(models["captioner"])["config"]["decode"]
    assert decode["beam_size"] > 1  # a default the slider's minimum would not give by chance
    assert at.slider(key="beam_size").value == decode["beam_size"]
    assert at.slider(key="max_length").value == decode["max_length"]


def test_a_remembered_checkpoint_that_was_deleted_gives_way_to_the_first(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint picked is kept across page switches; when its file has been deleted
    meanwhile, the picker falls back to the first checkpoint listed, without an error."""
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    shutil.copy(models["captioner"], models_dir / "a.pt")
    shutil.copy(models["show_and_tell"], models_dir / "b.pt")
    monkeypatch.setenv(ENV_VAR, str(models_dir))
    monkeypatch.setattr(sys, "argv", ["app.py"])
    at = _run(AppTest.from_file(APP, default_timeout=TIMEOUT))
    at.selectbox(key="captioner_checkpoint").set_value("b.pt")
    _run(at)
    for deleted in (False, True):
        at.radio(key="page").set_value("Generate text")
        _run(at)
        if deleted:
            (models_dir / "b.pt").unlink()
        at.radio(key="page").set_value("Caption an image")
        _run(at)
        picker = at.selectbox(key="captioner_checkpoint")
        assert picker.value == ("a.pt" if deleted else "b.pt"), deleted
        assert picker.options == (["a.pt"] if deleted else ["a.pt", "b.pt"])
        assert not at.error, _messages(at.error)


def test_scenes_are_drawn_at_the_captioners_size_within_the_generators_range() -> None:
    """`scene_size`: the captioner's input size, clamped to what the scenes generator draws
    legibly (MIN_SIZE .. MAX_SIZE)."""
    assert MIN_SIZE < MAX_SIZE
    for size in (MIN_SIZE, (MIN_SIZE + MAX_SIZE) // 2, MAX_SIZE):
        assert scene_size(size) == size
    for size in (1, MIN_SIZE - 1):
        assert scene_size(size) == MIN_SIZE
    for size in (MAX_SIZE + 1, 10 * MAX_SIZE):
        assert scene_size(size) == MAX_SIZE


def test_random_scene_caption_equals_library_and_follows_controls(
    app: AppTest, models: dict[str, Path], record_calls
) -> None:
    captioner = load_captioner(str(models["captioner"]))
    at = _run(app)
    at.slider(key="beam_size").set_value(3)
    at.slider(key="max_length").set_value(6)
    at.button(key="random_scene").click()
    _run(at)
    seed = at.session_state["scene_seed"]
    image, scene, references = render_random_scene(seed, scene_size(captioner.cfg.data.image_size))
    [expected] = caption_images(captioner, [image], beam_size=3, max_length=6, n_best=3)
    assert at.subheader[0].value == escape_markdown(expected.caption)
    assert _beams(at) == _expected_beams(expected)
    assert len(_beams(at)) == 3
    assert references == scene_captions(scene)
    shown_references = _messages(at.main.expander[0].text)
    assert shown_references == references
    # the attention model shows one heat map per caption word, in order, after the scene itself
    assert len(at.image) == 2 and len(at.image[1].proto.imgs) == len(expected.words)
    labels = [image.caption for image in at.image[1].proto.imgs]
    assert labels == [f"{i + 1}. {word}" for i, word in enumerate(expected.words)]
    names_all = caption_names_objects_correctly(expected.caption, scene)
    assert (len(at.success), len(at.warning)) == ((1, 0) if names_all else (0, 1))

    at.slider(key="beam_size").set_value(1)
    at.slider(key="max_length").set_value(2)
    _run(at)
    assert at.session_state["scene_seed"] == seed  # the same scene, captioned again
    [greedy] = caption_images(captioner, [image], beam_size=1, max_length=2, n_best=1)
    assert at.subheader[0].value == escape_markdown(greedy.caption)
    assert _beams(at) == _expected_beams(greedy) and len(_beams(at)) == 1
    assert len(greedy.words) <= 2

    # every further decoding option reaches the search
    at.slider(key="beam_size").set_value(4)
    at.slider(key="max_length").set_value(6)
    _run(at)
    options = dict(block_ngram_repeat=1, min_length=5, suppress_unk=True, diversity_groups=2,
                   diversity_strength=1.5)  # fmt: skip
    for key, value in options.items():
        widget = {"block_ngram_repeat": at.number_input, "suppress_unk": at.checkbox,
                  "diversity_groups": at.selectbox}.get(key, at.slider)  # fmt: skip
        widget(key=key).set_value(value)
    calls = record_calls(inference, "caption_images")
    _run(at)
    assert calls[-1].kwargs.items() >= options.items()
    [optioned] = caption_images(captioner, [image], beam_size=4, max_length=6, n_best=4, **options)
    assert _beams(at) == _expected_beams(optioned)
    labels = [image.caption for image in at.image[1].proto.imgs]  # no word twice now: in order
    assert labels == [f"{i + 1}. {word}" for i, word in enumerate(optioned.words)]
    assert len(set(optioned.words)) == len(optioned.words) > 1

    at.button(key="random_scene").click()
    _run(at)
    assert at.session_state["scene_seed"] != seed  # every press draws a fresh scene


def test_a_captions_words_are_shown_as_written(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Captions are words of the training captions, which keep signs such as *big* or ~~b~~: the
    caption, the beams and the heat maps' labels showed them in italics (a bug hunt,
    2026-12-07)."""
    models_dir = tmp_path / "models"
    payload = load_checkpoint(models["captioner"])
    payload["vocab"][4:] = [f"*{word}*" for word in payload["vocab"][4:]]  # after the specials
    save_checkpoint(payload, models_dir / "starred.pt")
    monkeypatch.setenv(ENV_VAR, str(models_dir))
    at = _run(AppTest.from_file(APP, default_timeout=TIMEOUT))
    at.slider(key="beam_size").set_value(3)
    at.button(key="random_scene").click()
    _run(at)
    seed = at.session_state["scene_seed"]
    captioner = load_captioner(str(models_dir / "starred.pt"))
    image = render_random_scene(seed, scene_size(captioner.cfg.data.image_size))[0]
    [expected] = caption_images(captioner, [image], beam_size=3, n_best=3)
    assert "*" in expected.caption
    assert at.subheader[0].value == expected.caption.replace("*", "\\*")
    assert [text for text, _, _ in _beams(at)] == [
        text.replace("*", "\\*") for text, _ in expected.beams
    ]
    labels = [image.caption for image in at.image[1].proto.imgs]
    assert labels == [f"{i + 1}. \\*{word[1:-1]}\\*" for i, word in enumerate(expected.words)]


def test_an_ensemble_captions_as_the_library_does_and_a_mismatch_is_one_line(
    app: AppTest, models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = _run(app)
    partners = at.multiselect(key="ensemble_with")
    assert partners.value == [] and partners.options == [
        "scenes_run/last.pt",
        "zz_no_attention/best.pt",
        "zz_no_attention/last.pt",
    ]  # every other captioner
    assert partners.proto.max_selections == 4  # every model is held in the server's memory
    at.slider(key="beam_size").set_value(3)
    partners.set_value(["zz_no_attention/best.pt"])
    at.button(key="random_scene").click()
    _run(at)
    captioner = load_captioner(str(models["captioner"]))
    image = render_random_scene(
        at.session_state["scene_seed"], scene_size(captioner.cfg.data.image_size)
    )[0]
    ensemble = load_ensemble([str(models["captioner"]), str(models["show_and_tell"])])
    [expected] = caption_images(ensemble, [image], beam_size=3, n_best=3)
    [alone] = caption_images(captioner, [image], beam_size=3, n_best=3)
    assert expected.beams != alone.beams  # the partner's probabilities count
    assert _beams(at) == _expected_beams(expected)
    assert "ensemble of 2 checkpoints" in " ".join(_messages(at.caption))
    assert len(at.image[1].proto.imgs) == len(expected.words)  # the attending member's maps
    # the partner picked as the checkpoint itself leaves the ensemble
    at.selectbox(key="captioner_checkpoint").set_value("zz_no_attention/best.pt")
    _run(at)
    assert at.multiselect(key="ensemble_with").value == []

    # a partner with another vocabulary: one line naming both, and the page recovers
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    shutil.copy(models["captioner"], models_dir / "a.pt")
    payload = load_checkpoint(models["captioner"])
    payload["vocab"][-2:] = payload["vocab"][:-3:-1]  # the last two words swapped
    save_checkpoint(payload, models_dir / "b.pt")
    monkeypatch.setenv(ENV_VAR, str(models_dir))
    at = _run(AppTest.from_file(APP, default_timeout=TIMEOUT))
    at.multiselect(key="ensemble_with").set_value(["b.pt"])
    _run(at)
    (error,) = _messages(at.error)
    assert error.startswith("a.pt and b.pt have different vocabularies (id "), error
    at.multiselect(key="ensemble_with").set_value([])
    _run(at)
    assert not at.error and "Upload an image" in " ".join(_messages(at.info))


def test_an_ensemble_is_reloaded_when_a_partner_file_changes_and_names_the_heat_maps(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ensemble's cache is keyed by every member's (mtime, size): a partner retrained (here
    its weights changed in place) is captioned with at the next run (a mutation audit: the
    members' keys not passed). The note says whose heat maps are shown."""
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    shutil.copy(models["captioner"], models_dir / "a.pt")
    shutil.copy(models["show_and_tell"], models_dir / "b.pt")
    monkeypatch.setenv(ENV_VAR, str(models_dir))
    monkeypatch.setattr(sys, "argv", ["app.py"])  # not pytest's argv
    at = _run(AppTest.from_file(APP, default_timeout=TIMEOUT))
    assert at.selectbox(key="captioner_checkpoint").value == "a.pt"
    at.slider(key="beam_size").set_value(3)
    at.multiselect(key="ensemble_with").set_value(["b.pt"])
    at.button(key="random_scene").click()
    _run(at)
    size = scene_size(load_captioner(str(models["captioner"])).cfg.data.image_size)
    image = render_random_scene(at.session_state["scene_seed"], size)[0]

    def expected() -> list[tuple[str, float]]:
        ensemble = load_ensemble([str(models_dir / "a.pt"), str(models_dir / "b.pt")])
        [result] = caption_images(ensemble, [image], beam_size=3, n_best=3)
        return _expected_beams(result)

    before = expected()
    assert _beams(at) == before
    notes = " ".join(_messages(at.caption))
    assert "ensemble of 2 checkpoints (a.pt, b.pt)" in notes
    assert "the heat maps are the first attending model's" in notes
    payload = load_checkpoint(models_dir / "b.pt")  # b retrained: other weights, same vocabulary
    payload["model"] = {name: value * 3 for name, value in payload["model"].items()}
    save_checkpoint(payload, models_dir / "b.pt")
    stamp = time.time() + 5
    os.utime(models_dir / "b.pt", (stamp, stamp))
    after = expected()
    assert after != before  # the new partner's probabilities tell
    _run(at)
    assert _beams(at) == after


@pytest.mark.parametrize("name", list(GOOD_UPLOADS))
def test_uploaded_image_caption_equals_library(
    app: AppTest, models: dict[str, Path], name: str
) -> None:
    content = GOOD_UPLOADS[name]()
    captioner = load_captioner(str(models["captioner"]))
    at = _run(app)
    at.slider(key="beam_size").set_value(2)
    at.file_uploader(key="upload").set_value((name, content, _mime(name)))
    _run(at)
    assert not at.error, _messages(at.error)
    [expected] = caption_images(captioner, [load_image(io.BytesIO(content))], beam_size=2, n_best=2)
    assert at.subheader[0].value == escape_markdown(expected.caption)
    assert _beams(at) == _expected_beams(expected)
    assert at.image[0].proto.imgs[0].caption == name.replace("_", "\\_")  # Markdown-inert


def test_top_beams_give_the_log_probabilities_caption_json_gives(
    app: AppTest, models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The Top beams table writes 4 decimals, as `captioner.caption --json` does: its numbers are
    the command's (they were rounded to 3, so the page read -2.1130 where the command said
    -2.1126)."""
    path = tmp_path / "scene.png"
    path.write_bytes(_encode(_scene(5), "PNG"))
    at = _run(app)
    at.slider(key="beam_size").set_value(3)
    at.file_uploader(key="upload").set_value((path.name, path.read_bytes(), "image/png"))
    _run(at)
    capsys.readouterr()
    argv = ["--checkpoint", str(models["captioner"]), "--json", "--beam-size", "3", "--n-best"]
    assert run_cli(caption.main, [*argv, "3", str(path)]) == 0
    [result] = json.loads(capsys.readouterr().out)["results"]
    expected = [
        (escape_markdown(beam["caption"]), beam["logprob"],
         "yes" if beam["finished"] else "no: cut at the length limit")
        for beam in result["beams"]
    ]  # fmt: skip
    assert _beams(at) == expected


def test_an_uploads_name_is_shown_as_written(app: AppTest) -> None:
    """The image's caption renders Markdown: an upload named :smile:_[x](y).png showed an emoji
    and a link (a bug hunt, 2026-12-07)."""
    at = _run(app)
    upload = (":smile:_[x](y).png", GOOD_UPLOADS["scene.png"](), "image/png")
    at.file_uploader(key="upload").set_value(upload)
    _run(at)
    assert at.image[0].proto.imgs[0].caption == "&#58;smile&#58;\\_\\[x\\](y).png"


def test_an_upload_survives_a_page_switch_and_goes_with_the_cleared_box(app: AppTest) -> None:
    """A page switch drops the uploader widget's own value (Streamlit forgets widgets that were not
    drawn), while the settings stay: the upload is kept for the session like them. Clearing the
    box forgets it."""
    name = "scene.png"
    upload = (name, GOOD_UPLOADS[name](), _mime(name))
    at = _run(app)
    at.file_uploader(key="upload").set_value(upload)
    _run(at)
    caption = at.subheader[0].value
    at.file_uploader(key="upload").set_value(None)  # the box's x
    _run(at)
    assert not at.subheader and "Upload an image" in " ".join(_messages(at.info))
    at.file_uploader(key="upload").set_value(upload)
    _run(at)
    at.radio(key="page").set_value("Generate text")
    _run(at)
    at.radio(key="page").set_value("Caption an image")
    _run(at)
    assert at.subheader and at.subheader[0].value == caption
    assert at.image[0].proto.imgs[0].caption == name


def test_show_and_tell_checkpoint_captions_without_heat_maps(
    app: AppTest, models: dict[str, Path]
) -> None:
    at = _run(app)
    at.selectbox(key="captioner_checkpoint").set_value("zz_no_attention/best.pt")
    at.button(key="random_scene").click()
    _run(at)
    captioner = load_captioner(str(models["show_and_tell"]))
    image, _, _ = render_random_scene(
        at.session_state["scene_seed"], scene_size(captioner.cfg.data.image_size)
    )
    beam_size = at.slider(key="beam_size").value
    [expected] = caption_images(captioner, [image], beam_size=beam_size, n_best=beam_size)
    assert expected.attention is None
    assert at.subheader[0].value == escape_markdown(expected.caption)
    assert _beams(at) == _expected_beams(expected)
    assert len(at.image) == 1  # the scene only: no attention to show
    assert not at.error


def test_animated_gif_is_captioned_by_its_first_frame(
    app: AppTest, models: dict[str, Path]
) -> None:
    captioner = load_captioner(str(models["captioner"]))
    content = _animated_gif()
    at = _run(app)
    at.file_uploader(key="upload").set_value(("animated.gif", content, "image/gif"))
    _run(at)
    with Image.open(io.BytesIO(content)) as gif:
        assert gif.n_frames == 2
        frames = [frame.convert("RGB") for frame in ImageSequence.Iterator(gif)]
    beam_size = at.slider(key="beam_size").value
    first, second = caption_images(captioner, frames, beam_size=beam_size, n_best=beam_size)
    assert _expected_beams(first) != _expected_beams(second)  # the frames tell apart
    assert _beams(at) == _expected_beams(first)


def test_upload_to_a_scenes_model_says_it_describes_coloured_shapes_only(app: AppTest) -> None:
    pixels = np.random.default_rng(7).integers(0, 256, size=(60, 80, 3), dtype=np.uint8)
    at = _run(app)
    at.file_uploader(key="upload").set_value(
        ("holiday.jpg", _encode(Image.fromarray(pixels), "JPEG"), "image/jpeg")
    )
    _run(at)
    [note] = [text for text in _messages(at.warning) if "coloured shapes only" in text]
    assert "synthetic scenes only" in note and "COCO or Flickr8k" in note
    [readme] = [e for e in at.main.expander if "Image captioning" in e.label]
    shown = " ".join(_messages(readme.markdown))
    assert "python -m captioner.train --config configs/captioner/flickr8k.yaml" in shown
    at.button(key="random_scene").click()  # a scene is what the model knows: no note
    _run(at)
    assert not any("coloured shapes only" in text for text in _messages(at.warning))


@pytest.mark.parametrize("name", list(BAD_UPLOADS))
def test_bad_upload_shows_message_and_page_stays_usable(app: AppTest, name: str) -> None:
    make, expected_text = BAD_UPLOADS[name]
    at = _run(app)
    at.file_uploader(key="upload").set_value((name, make(), _mime(name)))
    _run(at)
    errors = _messages(at.error)
    assert len(errors) == 1 and name in errors[0], errors
    assert any(text in errors[0] for text in expected_text.split("|")), errors
    assert "\n" not in errors[0] and "Traceback" not in errors[0]
    assert not at.subheader  # no caption for a bad file
    at.button(key="random_scene").click()
    _run(at)
    assert not at.error and at.subheader  # the page still captions


def test_checkpoint_names_in_the_pages_captions_are_shown_as_written(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint named $1$_*a*.pt read as math and italics, :red[x].pt as red text, :smile:.pt
    as an emoji in the ensemble's and the last text's captions (a bug hunt, 2026-12-07)."""
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    first, partner, char_lm = "$1$_*a*.pt", ":red[x].pt", ":smile:.pt"
    shutil.copy(models["captioner"], models_dir / first)
    shutil.copy(models["captioner"], models_dir / partner)
    shutil.copy(models["char_lm"], models_dir / char_lm)
    monkeypatch.setenv(ENV_VAR, str(models_dir))
    at = _run(AppTest.from_file(APP, default_timeout=TIMEOUT))
    at.selectbox(key="captioner_checkpoint").set_value(first)
    at.multiselect(key="ensemble_with").set_value([partner])
    at.button(key="random_scene").click()
    _run(at)
    said = " ".join(_messages(at.caption))
    assert "checkpoints (\\$1\\$\\_\\*a\\*.pt, &#58;red\\[x\\].pt): each" in said, said
    at.radio(key="page").set_value("Generate text")
    _run(at)
    at.button(key="generate").click()
    _run(at)
    _run(at)  # the next run shows the last text
    assert "Last generated text (&#58;smile:.pt):" in _messages(at.caption)


# --------------------------------------------------------------------------------------------
# Text page


def _text_page(app: AppTest) -> AppTest:
    at = _run(app)
    at.radio(key="page").set_value("Generate text")
    return _run(at)


TEXT_WIDGETS = {
    "prompt": "text_area",
    "length": "slider",
    "temperature": "slider",
    "top_p": "slider",
    "top_k": "number_input",
    "seed": "number_input",
}


def _generate(at: AppTest, **settings) -> str:
    """Set the text page's widgets by key, press Generate, return the text shown.

    A ``seed`` is pinned: "Fixed seed" is ticked first (the seed input is disabled without it).
    """
    if "seed" in settings and not at.checkbox(key="fixed_seed").value:
        at.checkbox(key="fixed_seed").check()
        _run(at)
    for key, value in settings.items():
        getattr(at, TEXT_WIDGETS[key])(key=key).set_value(value)
    at.button(key="generate").click()
    _run(at)
    return at.code[0].value


def _shown_seed(at: AppTest) -> int:
    [line] = [text for text in _messages(at.caption) if text.startswith("Seed ")]
    return int(line.split()[1].rstrip(",:"))


def _library_text(path: Path, prompt: str, length: int, seed: int, **sampling) -> str:
    model, vocab, config = load_char_lm(path)
    generator = torch.Generator().manual_seed(seed)
    precision = trained_precision(model, config)  # as the app runs it
    characters = generate(
        model, vocab, prompt, length, generator=generator, precision=precision, **sampling
    )
    return prompt + "".join(characters)


def test_generated_text_starts_with_prompt_and_is_reproducible(
    app: AppTest, models: dict[str, Path]
) -> None:
    at = _text_page(app)
    assert at.selectbox(key="char_lm_checkpoint").options == [
        "text_run/best.pt",
        "text_run/last.pt",
    ]
    text = _generate(at, prompt="the cat", length=40, temperature=1.0, seed=7)
    assert text.startswith("the cat") and len(text) == len("the cat") + 40
    assert text == _library_text(models["char_lm"], "the cat", 40, 7, temperature=1.0)
    assert _generate(at) == text  # the same seed and settings: the same text
    other = _generate(at, seed=8)
    assert other.startswith("the cat") and other != text
    assert not at.error
    # top-p reaches the sampler (the nucleus changes this text), and the text stays on the page
    # through a page switch
    nucleus = _generate(at, top_p=0.3)
    assert nucleus == _library_text(models["char_lm"], "the cat", 40, 8, top_p=0.3) != other
    at.radio(key="page").set_value("Caption an image")
    _run(at)
    at.radio(key="page").set_value("Generate text")
    _run(at)
    assert at.code[0].value == nucleus


def test_a_checkpoint_rewritten_in_place_is_served_anew(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that writes a better best.pt while the app is open: the next Generate uses the new
    weights (the loaded model is cached by path, modification time and size)."""
    models_dir = tmp_path / "models"
    shutil.copytree(models["char_lm"].parent, models_dir / "text_run")
    monkeypatch.setenv(ENV_VAR, str(models_dir))
    monkeypatch.setattr(sys, "argv", ["app.py"])
    at = _text_page(AppTest.from_file(APP, default_timeout=TIMEOUT))
    served = models_dir / "text_run" / "best.pt"
    before = _generate(at, prompt="the ", length=30, temperature=1.0, seed=3)
    assert before == _library_text(served, "the ", 30, 3)
    retrained = train_tiny_char_lm(tmp_path / "again", tmp_path / "text.txt", "train.seed=5")
    shutil.copy(retrained, served)
    after = _generate(at)
    assert after == _library_text(retrained, "the ", 30, 3) != before
    # a rewrite of the same size is told apart by its modification time
    key = file_key(served)
    served.write_bytes(served.read_bytes()[::-1])
    os.utime(served, ns=(key[0] + 10**9, key[0] + 10**9))
    assert file_key(served) != key and file_key(served)[1] == key[1]


def test_each_generate_draws_a_fresh_seed_unless_one_is_fixed(
    app: AppTest, models: dict[str, Path]
) -> None:
    at = _text_page(app)
    assert at.checkbox(key="fixed_seed").value is False
    at.text_area(key="prompt").set_value("the ")
    at.slider(key="length").set_value(40)
    first = _generate(at)
    first_seed = _shown_seed(at)
    second = _generate(at)
    second_seed = _shown_seed(at)
    assert first_seed != second_seed and first != second  # two clicks, two texts
    for text, seed in ((first, first_seed), (second, second_seed)):  # each one is its seed's text
        assert text == _library_text(models["char_lm"], "the ", 40, seed, temperature=0.8)

    # "Fixed seed" keeps the seed of the last text: the next clicks repeat that text
    at.checkbox(key="fixed_seed").check()
    _run(at)
    assert at.number_input(key="seed").value == second_seed
    assert _generate(at) == second and _generate(at) == second
    assert _shown_seed(at) == second_seed and "(fixed)" in " ".join(_messages(at.caption))
    pinned = _generate(at, seed=5)
    assert pinned == _library_text(models["char_lm"], "the ", 40, 5, temperature=0.8)
    assert _generate(at) == pinned

    at.checkbox(key="fixed_seed").uncheck()  # fresh seeds again
    _run(at)
    assert _generate(at) != pinned and _shown_seed(at) != 5


def test_settings_survive_page_switches(app: AppTest) -> None:
    at = _run(app)
    at.slider(key="beam_size").set_value(4)
    at.slider(key="max_length").set_value(9)
    _run(at)
    at.number_input(key="block_ngram_repeat").set_value(3)  # "More decoding options" too
    at.slider(key="min_length").set_value(2)
    at.checkbox(key="suppress_unk").check()
    at.selectbox(key="diversity_groups").set_value(2)
    at.slider(key="diversity_strength").set_value(1.5)
    _run(at)
    at.radio(key="page").set_value("Generate text")
    _run(at)
    at.text_area(key="prompt").set_value("the hen")
    at.slider(key="length").set_value(55)
    at.slider(key="temperature").set_value(1.35)
    at.slider(key="top_p").set_value(0.9)
    at.number_input(key="top_k").set_value(3)
    at.checkbox(key="fixed_seed").check()
    _run(at)
    at.number_input(key="seed").set_value(42)
    at.selectbox(key="char_lm_checkpoint").set_value("text_run/last.pt")
    _run(at)

    at.radio(key="page").set_value("Caption an image")
    _run(at)
    assert at.slider(key="beam_size").value == 4 and at.slider(key="max_length").value == 9
    assert at.number_input(key="block_ngram_repeat").value == 3
    assert at.slider(key="min_length").value == 2 and at.checkbox(key="suppress_unk").value
    assert at.selectbox(key="diversity_groups").value == 2
    assert at.slider(key="diversity_strength").value == pytest.approx(1.5)
    at.selectbox(key="captioner_checkpoint").set_value("zz_no_attention/best.pt")
    _run(at)
    at.radio(key="page").set_value("Generate text")
    _run(at)
    assert at.text_area(key="prompt").value == "the hen"
    assert at.slider(key="length").value == 55
    assert at.slider(key="temperature").value == pytest.approx(1.35)
    assert at.slider(key="top_p").value == pytest.approx(0.9)
    assert at.number_input(key="top_k").value == 3
    assert at.checkbox(key="fixed_seed").value is True
    assert at.number_input(key="seed").value == 42
    assert at.selectbox(key="char_lm_checkpoint").value == "text_run/last.pt"
    at.radio(key="page").set_value("Caption an image")
    _run(at)
    assert at.selectbox(key="captioner_checkpoint").value == "zz_no_attention/best.pt"
    assert at.slider(key="beam_size").value == 4


DECODE_KEYS = ("beam_size", "max_length", "min_length", "block_ngram_repeat", "suppress_unk",
               "diversity_groups", "diversity_strength")  # fmt: skip


def _decoding(at: AppTest) -> dict:
    widgets = [*at.slider, *at.number_input, *at.checkbox, *at.selectbox]
    return {w.key: w.value for w in widgets if w.key in DECODE_KEYS}


def test_decoding_settings_left_alone_follow_the_checkpoint_picked(
    tmp_path: Path, scenes_annotations: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sidebar's decoding settings default to the picked checkpoint's decode.* (as caption
    and evaluate do): picking another gave the first one's, which the user never touched. A
    setting the user changed stays."""
    models = tmp_path / "models"
    train_tiny_captioner(
        models / "a_run", scenes_annotations, "train.max_steps=1", "decode.beam_size=4",
        "decode.min_length=3", "decode.block_ngram_repeat=1", "decode.suppress_unk=true",
        "decode.diversity_groups=2", "decode.diversity_strength=0.5", "decode.max_length=9",
    )  # fmt: skip
    train_tiny_captioner(models / "b_run", scenes_annotations, "train.max_steps=1")
    monkeypatch.setenv(ENV_VAR, str(models))
    monkeypatch.setattr(sys, "argv", ["app.py"])
    picked = {}
    for name in ("a_run/best.pt", "b_run/best.pt"):  # each alone, in a fresh session
        fresh = AppTest.from_file(APP, default_timeout=TIMEOUT)
        fresh.session_state["captioner_checkpoint"] = name
        picked[name] = _decoding(_run(fresh))
    assert picked["a_run/best.pt"]["beam_size"] == 4 and picked["b_run/best.pt"]["beam_size"] == 2
    at = _run(AppTest.from_file(APP, default_timeout=TIMEOUT))
    assert at.selectbox(key="captioner_checkpoint").value == "a_run/best.pt"
    at.selectbox(key="captioner_checkpoint").set_value("b_run/best.pt")
    assert _decoding(_run(at)) == picked["b_run/best.pt"]
    at.slider(key="max_length").set_value(12)  # the user's own
    at.selectbox(key="captioner_checkpoint").set_value("a_run/best.pt")
    assert _decoding(_run(at)) == {**picked["a_run/best.pt"], "max_length": 12}


def test_top_k_one_is_greedy_whatever_the_seed(app: AppTest, models: dict[str, Path]) -> None:
    at = _text_page(app)
    greedy = _library_text(models["char_lm"], "the ", 25, 0, greedy=True)
    assert _generate(at, prompt="the ", length=25, top_k=1, seed=1) == greedy
    assert _generate(at, seed=2) == greedy


def test_empty_and_out_of_vocabulary_prompts_show_messages(app: AppTest) -> None:
    at = _text_page(app)
    text = _generate(at, prompt="", length=20)
    assert "prompt is empty" in " ".join(_messages(at.info))
    assert len(text) == 20 and not at.error  # continues from the start of a line

    at.text_area(key="prompt").set_value("the cat \u2603 sat Q")
    at.button(key="generate").click()
    _run(at)
    errors = _messages(at.error)
    assert len(errors) == 1 and "'\u2603'" in errors[0] and "'Q'" in errors[0], errors
    assert "vocabulary" in errors[0]
    assert _generate(at, prompt="the dog").startswith("the dog")  # still usable
    assert not at.error


# --------------------------------------------------------------------------------------------
# The models directory


def test_error_lines_show_names_as_written(
    app: AppTest, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An error line quotes what the user wrote: an upload named $1$ *x*.png read as math and
    italics, a models directory runs_$x$_:red[y] as math and red text (a bug hunt, 2026-12-07)."""
    at = _run(app)
    at.file_uploader(key="upload").set_value(("$1$ *x*.png", b"not pixels", "image/png"))
    _run(at)
    [error] = _messages(at.error)
    assert error.startswith("'\\$1\\$ \\*x\\*.png' is not an image Pillow can decode"), error

    monkeypatch.setenv(ENV_VAR, str(tmp_path / "runs_$x$_:red[y]"))
    at = _run(AppTest.from_file(APP, default_timeout=TIMEOUT))
    [error] = _messages(at.error)
    assert "/runs\\_\\$x\\$\\_&#58;red\\[y\\]' does not exist; run \\`make demo" in error, error


def test_the_models_directory_is_named_as_written(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A folder named runs_$x$_:red[y]`z read as math and red text, and its backtick ended the
    sidebar's code span (a bug hunt, 2026-12-07)."""
    models_dir = tmp_path / "runs_$x$_:red[y]`z"
    models_dir.mkdir()
    monkeypatch.setattr(sys, "argv", ["app.py"])
    monkeypatch.setenv(ENV_VAR, str(models_dir))
    at = _run(AppTest.from_file(APP, default_timeout=TIMEOUT))
    assert f"Models directory: ``{models_dir}``" in _messages(at.sidebar.caption)
    escaped = "/runs\\_\\$x\\$\\_&#58;red\\[y\\]\\`z'. Run ``make demo-models MODELS_DIR="
    assert escaped in " ".join(_messages(at.info))
    at.radio(key="page").set_value("Training curves")
    _run(at)
    assert "/runs\\_\\$x\\$\\_&#58;red\\[y\\]\\`z'. Training" in " ".join(_messages(at.info))


def test_missing_or_empty_models_dir_shows_message(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sys, "argv", ["app.py"])
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nowhere"))
    at = _run(AppTest.from_file(APP, default_timeout=TIMEOUT))
    assert "does not exist" in " ".join(_messages(at.error))

    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    at = _run(AppTest.from_file(APP, default_timeout=TIMEOUT))
    assert "No captioner checkpoint" in " ".join(_messages(at.info))
    at.radio(key="page").set_value("Generate text")
    _run(at)
    assert "No char_lm checkpoint" in " ".join(_messages(at.info))


def test_a_missing_models_dir_names_the_make_command_that_fills_that_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`make demo-models` writes into the repository's models/; another missing folder (`make
    app MODELS_DIR=runs`, $CRNN_MODELS_DIR) is filled by `make demo-models MODELS_DIR=...`,
    which the app's line names, absolute (make runs in the repository), and make runs as is."""
    default = tmp_path / "models"
    with pytest.raises(UserError, match=r"run `make demo-models` to create"):
        check_models_dir(default, default)
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "my runs"
    with pytest.raises(UserError) as refused:
        check_models_dir(Path("my runs"), default)
    command = f"make demo-models MODELS_DIR={shlex.quote(str(runs))}"
    assert f"run `{command}` to create the bundled models there" in str(refused.value)
    if shutil.which("make"):  # the advice, dry-run: it writes the models into that folder
        dry = subprocess.run(
            [*shlex.split(command), "-n", "-C", str(REPO)], capture_output=True, text=True
        )
        assert f'-m bench.make_demo_models --models-dir "{runs}" ' in dry.stdout, dry


def test_the_default_models_dir_named_relatively_gets_plain_make_and_a_file_is_not_a_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The default folder written otherwise (relative, as `make app` passes it) is still the
    default: plain `make demo-models`. A models directory that is a file is said to be one."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"run `make demo-models` to create"):
        check_models_dir(tmp_path / "models", Path("models"))
    (tmp_path / "a file").write_text("x")
    with pytest.raises(UserError, match=r"^models directory 'a file' is a file; point"):
        check_models_dir(Path("a file"), Path("models"))


def test_only_files_inside_the_models_dir_load(models: dict[str, Path]) -> None:
    models_dir = models["dir"]
    assert checkpoint_path(models_dir, "text_run/best.pt") == models["char_lm"].resolve()
    for crafted in ("outside.pt", "../outside/elsewhere.pt", str(models["outside"])):
        with pytest.raises(UserError, match="outside the models directory"):
            checkpoint_path(models_dir, crafted)
    with pytest.raises(UserError, match="not a .pt file"):
        checkpoint_path(models_dir, "scenes_run")
    listing = list_checkpoints(models_dir)
    names = {entry.name: entry.task for entry in listing.entries}
    assert names == {
        "scenes_run/best.pt": "captioner",
        "scenes_run/last.pt": "captioner",
        "text_run/best.pt": "char_lm",
        "text_run/last.pt": "char_lm",
        "zz_no_attention/best.pt": "captioner",
        "zz_no_attention/last.pt": "captioner",
    }
    assert sorted(name for name, _ in listing.skipped) == ["broken.pt", "foreign.pt", "outside.pt"]
    summaries = {entry.name: entry.summary for entry in listing.entries}
    assert summaries["scenes_run/best.pt"].startswith("image captioner, lstm 32, attention")
    assert "no attention" in summaries["zz_no_attention/best.pt"]
    assert summaries["text_run/best.pt"].startswith("character-level language model, lstm")
    assert "val loss" in summaries["text_run/best.pt"]


def test_feature_caches_and_hidden_folders_are_not_searched(tmp_path: Path) -> None:
    fingerprint = tmp_path / "run" / "features" / "abc"
    fingerprint.mkdir(parents=True)
    (fingerprint / "meta.json").write_text("{}")
    torch.save({"grid": torch.zeros(1)}, fingerprint / "x.pt")
    other_cache = tmp_path / "run" / "cache" / "f00d"
    other_cache.mkdir(parents=True)
    (other_cache / "meta.json").write_text("{}")
    torch.save({"grid": torch.zeros(1)}, other_cache / "y.pt")
    (tmp_path / ".hidden").mkdir()
    torch.save({"x": 1}, tmp_path / ".hidden" / "z.pt")
    torch.save({"x": 1}, tmp_path / "run" / "kept.pt")
    (tmp_path / "features").mkdir()  # a run the user named so: its folder is no cache
    torch.save({"x": 1}, tmp_path / "features" / "kept.pt")
    listing = list_checkpoints(tmp_path)
    searched = [name for name, _ in listing.skipped]
    assert searched == ["features/kept.pt", "run/kept.pt"] and not listing.entries


def test_models_dir_option_beats_environment_beats_default(tmp_path: Path) -> None:
    default = tmp_path / "default"
    assert parse_app_args([], {}, default).models_dir == default
    assert parse_app_args([], {ENV_VAR: "env"}, default).models_dir == Path("env")
    args = parse_app_args(["--models-dir", "cli", "--device", "cpu"], {ENV_VAR: "env"}, default)
    assert args.models_dir == Path("cli") and args.device == "cpu"
    assert parse_app_args(["-x", "tests/"], {}, default).models_dir == default  # pytest's argv


def test_the_app_runs_on_the_cpu_unless_told_and_expands_a_home_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--device`` is cpu by default (the README's word); a models directory given as ``~/...``,
    by the option or the environment, is the user's home folder's."""
    monkeypatch.setenv("HOME", str(tmp_path))
    args = parse_app_args(["--models-dir", "~/models"], {}, Path("d"))
    assert args.models_dir == tmp_path / "models" and args.device == "cpu"
    assert parse_app_args([], {ENV_VAR: "~/env"}, Path("d")).models_dir == tmp_path / "env"


# --------------------------------------------------------------------------------------------
# Attention heat maps


def test_heat_map_is_brightest_where_attention_is_highest() -> None:
    image = Image.new("RGB", (40, 20), (90, 90, 90))
    attention = torch.zeros(4, 2, 4)
    attention[0, 0, 3] = attention[1, 1, 0] = 1.0  # cells a transposed map would put elsewhere
    attention[2] = 1 / 8  # uniform: no spot stands out
    attention[3, 1, 0] = 0.05  # a weak map, scaled by its own peak: as bright as a strong one
    overlays = attention_overlays(image, attention, display_size=80)
    assert len(overlays) == 4 and all(o.size == (80, 40) for o in overlays)
    assert np.array_equal(np.asarray(overlays[3]), np.asarray(overlays[1]))
    for overlay, (row, col) in zip(overlays[:2], [(0, 3), (1, 0)], strict=True):
        brightness = np.asarray(overlay, dtype=np.float32).sum(axis=2)  # (H, W)
        y, x = np.unravel_index(brightness.argmax(), brightness.shape)
        assert y // 20 == row and x // 20 == col  # inside the attended cell (20 x 20 pixels)
    uniform = np.asarray(overlays[2], dtype=np.float32)
    assert (np.ptp(uniform, axis=(0, 1)) == 0).all()  # a flat map colours the image evenly


def test_colormap_runs_dark_to_bright_and_zero_attention_leaves_image_dimmed() -> None:
    ramp = colormap(np.linspace(0, 1, 11)).astype(int).sum(axis=1)
    assert (np.diff(ramp) > 0).all()
    image = Image.new("RGB", (8, 8), (200, 100, 50))
    dimmed = np.asarray(attention_overlay(image, np.zeros((2, 2))), dtype=np.float32)
    darkest = colormap(np.zeros(1))[0]
    assert np.allclose(dimmed, np.array([200, 100, 50]) * 0.4 + darkest * 0.6, atol=1)


def test_colormap_interpolates_its_anchors_and_clips_what_lies_outside() -> None:
    """At each anchor its colour, a third of the way to the next the rounded mix of the two, and
    values outside [0, 1] the end colours (a value above 1 ran past the brightest anchor)."""
    anchors = heatmap.COLORMAP_ANCHORS.astype(np.float64)
    steps = len(anchors) - 1
    assert np.array_equal(colormap(np.arange(steps + 1) / steps), anchors)
    exact = (anchors[:-1] * 2 + anchors[1:]) / 3  # fractions of 1/3 and 2/3: no ties to round
    assert np.array_equal(colormap((np.arange(steps) + 1 / 3) / steps), np.rint(exact))
    assert np.array_equal(colormap(np.array([-0.5, 1.5])), anchors[[0, -1]])


def test_a_maps_peak_is_drawn_in_the_brightest_colour() -> None:
    """Each map is scaled by its own maximum, so its peak gets the colour map's top colour
    whatever the weights sum to (scaled by their sum, a peak of 0.6 was drawn dim)."""
    image = Image.new("RGB", (4, 4), (100, 100, 100))
    overlay = np.asarray(attention_overlay(image, np.array([[0.0, 0.3], [0.1, 0.6]])))
    top = np.rint(np.full(3, 100.0) * 0.4 + colormap(np.ones(1))[0] * 0.6)
    assert (overlay.reshape(-1, 3) == top).all(axis=1).sum() >= 1
    assert (overlay.reshape(-1, 3).astype(int).sum(axis=1) <= top.sum()).all()


def test_a_thin_upload_keeps_a_row_of_pixels_and_a_flat_attention_is_refused() -> None:
    """A 1000 x 1 image scaled to 160 pixels keeps one pixel of height (0 was asked of PIL, which
    refused it); an attention without its word axis is a bug said as such."""
    assert heatmap.fit_image(Image.new("RGB", (1000, 1)), 160).size == (160, 1)
    assert heatmap.fit_image(Image.new("RGB", (2, 900)), 90).size == (1, 90)
    with pytest.raises(ValueError, match=r"attention must be \(words, grid_h, grid_w\)"):
        attention_overlays(Image.new("RGB", (8, 8)), np.ones((2, 2)))


def test_maps_are_upsampled_bilinearly_from_a_tensor_of_any_precision() -> None:
    """Between two cells the weight goes smoothly (bilinear, not blocks of nearest cells); a
    bfloat16 or float16 tensor (a model run in reduced precision) is drawn as its float32 copy."""
    assert np.allclose(heatmap.upsample(np.array([[0.0, 1.0]]), (4, 1)), [[0, 0.25, 0.75, 1]])
    image = Image.new("RGB", (8, 8), (90, 90, 90))
    attention = torch.rand(2, 2, 2, generator=torch.Generator().manual_seed(0))
    for dtype in (torch.bfloat16, torch.float16):
        half = attention.to(dtype)
        drawn = attention_overlays(image, half, display_size=8)
        expected = attention_overlays(image, half.float().numpy(), display_size=8)
        assert len(drawn) == len(expected) == 2
        for a, b in zip(drawn, expected, strict=True):
            assert np.array_equal(np.asarray(a), np.asarray(b)), dtype


@pytest.mark.parametrize("size", [(7, 4), (4, 7), (195, 64), (64, 64), (10, 9), (3, 1)])
def test_the_centre_square_is_torchvisions_centre_crop(size: tuple[int, int]) -> None:
    """`centre_square` cuts where the captioner's CenterCrop does, also where the margin is odd
    (half a pixel: torchvision rounds it half to even, as Python's round)."""
    from torchvision.transforms import v2

    width, height = size
    pixels = (np.arange(width * height * 3) % 251).astype(np.uint8).reshape(height, width, 3)
    image = Image.fromarray(pixels)
    side = min(size)
    expected = v2.CenterCrop(side)(image)
    assert np.array_equal(np.asarray(heatmap.centre_square(image)), np.asarray(expected))


def test_heat_maps_of_a_wide_upload_cover_the_centre_square_the_model_sees(
    app: AppTest, models: dict[str, Path], record_calls
) -> None:
    """The captioner sees the centre square of an image (its eval transform resizes the shorter
    side and crops the centre), and its attention grid covers that square: the heat maps are drawn
    over it, not stretched over the whole upload (a map's peak on the square's left edge was
    drawn over the cut-off left side)."""
    image = Image.new("RGB", (192, 64), (0, 0, 255))  # the sides, which the crop cuts: blue
    image.paste((255, 0, 0), (64, 0, 128, 64))  # the centre square: red
    calls = record_calls(heatmap, "attention_overlays")
    at = _run(app)
    at.file_uploader(key="upload").set_value(("wide.png", _encode(image, "PNG"), "image/png"))
    _run(at)
    [call] = calls
    # the pixels the model reads: its transform's crop, at the upload's own resolution
    captioner = load_captioner(str(models["captioner"]))
    size = captioner.cfg.data.image_size
    seen = captioner.transform(image)  # (3, S, S), normalised: red where the square is red
    assert seen.shape[1:] == (size, size) and (seen[0] > seen[2]).all()
    assert np.array_equal(np.asarray(call.args[0]), np.asarray(image.crop((64, 0, 128, 64))))
    assert len(call.result) == len(at.image[1].proto.imgs)
    for overlay in call.result:
        assert overlay.size[0] == overlay.size[1]  # square, as the grid is
        pixels = np.asarray(overlay, dtype=np.int16)
        assert (pixels[..., 0] > pixels[..., 2]).all()  # none of the blue sides


def test_env_var_is_read_when_no_option_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "from-env")
    assert parse_app_args([], os.environ, Path("d")).models_dir == Path("from-env")


def test_streamlit_config_limits_uploads_and_hides_tracebacks() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    assert 1 <= config["server"]["maxUploadSize"] <= 50  # megabytes
    assert config["client"]["showErrorDetails"] is False
    assert config["browser"]["gatherUsageStats"] is False
