"""Checkpoints cut short or tampered with: one line and exit status 2 from every command that reads
them, nothing overwritten, and the app lists each as unreadable while the good ones keep working.

The cases (issue 9, item 4): a truncated file, flipped bytes (inside a tensor and inside the
pickle: torch.load checks no CRC, `load_checkpoint` does), a zip that lacks a member, a pickle that
would run code (built here; weights_only refuses it unrun), a zip rebuilt with compression (the
shape of a zip bomb; torch.save never compresses), a checkpoint of the other task, a
future format_version, and tensors of the wrong shape for the checkpoint's own config. The commands:
char_lm.sample, char_lm.evaluate, captioner.caption, captioner.evaluate, and --resume of both
trainers (a bad last.pt must leave the run folder byte for byte as it was).
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest
from tiny_models import train_tiny_captioner, train_tiny_char_lm

from captioner import caption, evaluate
from captioner import train as captioner_train
from captioner.scenes import render_random_scene
from char_lm import evaluate as char_lm_evaluate
from char_lm import sample
from char_lm import train as char_lm_train
from crnn_app.models_dir import ENV_VAR, describe_checkpoint
from recurrent import checkpoint as checkpoint_module
from recurrent.checkpoint import (
    FORMAT_VERSION,
    check_state_dict,
    load_checkpoint,
    save_checkpoint,
)
from recurrent.config import value_counts
from recurrent.errors import UserError, run_cli

REPO = Path(__file__).resolve().parents[1]
CAPTIONER_TINY = str(REPO / "configs" / "captioner" / "tiny.yaml")
CHAR_LM_TINY = str(REPO / "configs" / "char_lm" / "tiny.yaml")
APP = str(REPO / "app.py")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, scenes_annotations: Path) -> dict:
    root = tmp_path_factory.mktemp("tampered")
    text = root / "text.txt"
    return {
        "root": root,
        "text": text,
        "annotations": scenes_annotations,
        "char_lm": train_tiny_char_lm(root / "char_lm_run", text),
        "captioner": train_tiny_captioner(root / "captioner_run", scenes_annotations),
    }


# --------------------------------------------------------------------------------------------
# The tampering: each takes a good checkpoint's path and the other task's, returns new bytes


def _member_data(path: Path, name_end: str) -> tuple[int, int]:
    """(offset, size) of the bytes of the first zip member whose name ends with `name_end`."""
    data = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(name_end))
    name_length, extra_length = struct.unpack(
        "<HH", data[info.header_offset + 26 : info.header_offset + 30]
    )
    return info.header_offset + 30 + name_length + extra_length, info.file_size


def _flip(path: Path, name_end: str) -> bytes:
    data = bytearray(path.read_bytes())
    offset, size = _member_data(path, name_end)
    data[offset + size // 2] ^= 0x10  # one bit of one byte, in the middle of the member
    return bytes(data)


def _largest_tensor(path: Path) -> str:
    with zipfile.ZipFile(path) as archive:
        infos = [i for i in archive.infolist() if "/data/" in i.filename]
    return max(infos, key=lambda info: info.file_size).filename


def _without_member(path: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(buffer, "w") as target:
        for info in source.infolist():
            if not info.filename.endswith("/data/0"):
                target.writestr(info, source.read(info.filename))
    return buffer.getvalue()


def _recompressed(path: Path) -> bytes:
    """Every member deflated, as a zip tool rebuilding the file would (torch.save stores them):
    the shape of a zip bomb, whose few MB torch.load inflated to GBs before any check."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(buffer, "w") as target:
        for info in source.infolist():
            target.writestr(info.filename, source.read(info.filename), zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


class RunsCode:
    """What a hostile checkpoint would smuggle in: unpickling it calls os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _payload_bytes(payload: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def _runs_code(path: Path, marker: Path) -> bytes:
    payload = torch.load(path, weights_only=True)
    payload["model"]["hook"] = RunsCode(marker)
    return _payload_bytes(payload)


def _future(path: Path) -> bytes:
    """The next format version: the likeliest a newer release would write."""
    payload = torch.load(path, weights_only=True)
    return _payload_bytes({**payload, "format_version": FORMAT_VERSION + 1})


def _replaced(path: Path, **fields: object) -> bytes:
    """The checkpoint with top-level ``fields`` replaced."""
    return _payload_bytes({**torch.load(path, weights_only=True), **fields})


def _wrong_shapes(path: Path) -> bytes:
    """One tensor of the model state with an extra row: the config is left as it was."""
    payload = torch.load(path, weights_only=True)
    name = next(n for n, t in payload["model"].items() if t.dim() == 2)
    tensor = payload["model"][name]
    payload["model"][name] = torch.cat([tensor, tensor[:1]])
    return _payload_bytes(payload)


def _edited_config(path: Path) -> bytes:
    """The config's model section replaced by a number: the file reads, its config does not."""
    payload = torch.load(path, weights_only=True)
    return _payload_bytes({**payload, "config": {**payload["config"], "model": 5}})


def _laughs(levels: int) -> list:
    """Ten x's, in a list referred to ten times, ... ``levels`` deep: 10^levels values, which a
    pickle writes in a few hundred bytes (it writes an object once, then refers to it)."""
    laughs: list = ["x"] * 10
    for _ in range(levels - 1):
        laughs = [laughs] * 10
    return laughs


def _shared_config(path: Path) -> bytes:
    """A config value that refers to one list a million times over (10^9: the machine's memory
    ran out while reading it)."""
    payload = torch.load(path, weights_only=True)
    payload["config"]["train"]["lr"] = _laughs(6)
    return _payload_bytes(payload)


TAMPERED: dict[str, tuple[Callable[[Path, Path, Path], bytes], str]] = {
    "truncated": (
        lambda good, other, marker: good.read_bytes()[: good.stat().st_size // 2],
        "truncated",
    ),
    "flipped tensor": (
        lambda good, other, marker: _flip(good, _largest_tensor(good)),
        "fails its checksum",
    ),
    "flipped pickle": (lambda good, other, marker: _flip(good, "data.pkl"), "fails its checksum"),
    "missing member": (lambda good, other, marker: _without_member(good), "lacks its part"),
    "runs code": (lambda good, other, marker: _runs_code(good, marker), "refused unread"),
    "compressed": (lambda good, other, marker: _recompressed(good), "has compressed parts"),
    "other task": (lambda good, other, marker: other.read_bytes(), "this command needs a"),
    "future version": (lambda good, other, marker: _future(good), "newer than this version reads"),
    "task of a million characters": (
        lambda good, other, marker: _replaced(good, task="x" * 1_000_000),
        "for an unknown task 'xxxxxxxxxx",  # cut: every line is checked for its length
    ),
    "wrong shapes": (
        lambda good, other, marker: _wrong_shapes(good),
        "'s weights do not fit its config: '",  # the tensor named, as in the app, for both tasks
    ),
    "edited config": (lambda good, other, marker: _edited_config(good), "'model'"),
    "shared data": (
        lambda good, other, marker: _shared_config(good),
        "refers to the same data over and over",
    ),
}


def _tamper(trained: dict, task: str, case: str, target: Path) -> Path:
    other = "captioner" if task == "char_lm" else "char_lm"
    make, _ = TAMPERED[case]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(make(trained[task], trained[other], trained["root"] / "pwned"))
    return target


def test_every_tampering_is_caught_by_load_checkpoint(trained, tmp_path):
    for task in ("char_lm", "captioner"):
        for case, (_, fragment) in TAMPERED.items():
            path = _tamper(trained, task, case, tmp_path / task / f"{case}.pt")
            if case == "wrong shapes":  # the file reads; the shapes are the model's check
                payload = load_checkpoint(path, task=task)
                good = load_checkpoint(trained[task], task=task)["model"]
                with pytest.raises(UserError, match="do not fit its config") as caught:
                    check_state_dict(good, payload["model"], path)
                with pytest.raises(UserError, match="do not fit its config"):
                    describe_checkpoint(path)  # what the app lists
                extra = {**good, "extra.weight": torch.zeros(1)}  # one tensor more than the model's
                with pytest.raises(UserError, match="has an unexpected 'extra.weight'"):
                    check_state_dict(good, extra, path)
                continue
            if case == "edited config":  # the file reads; its config is the reader's check
                with pytest.raises(UserError, match="config key 'model': expected ModelConfig"):
                    describe_checkpoint(path)
                continue
            with pytest.raises(UserError, match=fragment) as caught:
                load_checkpoint(path, task=task)
            assert str(path) in str(caught.value) and len(str(caught.value)) < 500
            try:  # the app's reading maps the tensors from the file: the same refusals
                load_checkpoint(path)
            except UserError as err:
                with pytest.raises(UserError) as described:
                    describe_checkpoint(path)
                assert str(described.value) == str(err), case
    assert not (trained["root"] / "pwned").exists()  # the hostile pickle never ran


def test_a_zip_bomb_is_refused_before_anything_inflates(trained, tmp_path, monkeypatch):
    """A checkpoint whose largest tensor views a storage of 64 MiB of zeros, deflated to under a
    MiB: the shapes fit the model, so every command loaded it after inflating the whole storage
    (6 MB of file took 2.5 GB of memory for `sample`). It is refused from the zip's directory."""
    payload = torch.load(trained["char_lm"], weights_only=True)
    name, tensor = max(payload["model"].items(), key=lambda item: item[1].numel())
    storage = torch.zeros(16 * 2**20, dtype=tensor.dtype)
    payload["model"][name] = storage[: tensor.numel()].view(tensor.shape)
    stored = tmp_path / "stored.pt"
    stored.write_bytes(_payload_bytes(payload))
    bomb = tmp_path / "bomb.pt"
    bomb.write_bytes(_recompressed(stored))
    assert bomb.stat().st_size < 2**20 < 64 * 2**20 < stored.stat().st_size
    inflating = []
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda *args, **kwargs: inflating.append(args))
    with pytest.raises(
        UserError, match=r"\((\d+) of \1, 64\.\d\d MiB once inflated from \d+\.\d\d KiB\)"
    ) as caught:
        load_checkpoint(bomb)
    assert "zip bomb" in str(caught.value) and not inflating


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_a_member_compressed_by_any_method_is_refused(tmp_path, method):
    """bzip2 and LZMA inflate further than deflate: one member compressed by any method but
    torch.save's "stored" is refused, counted among the file's parts."""
    good = tmp_path / "good.pt"
    save_checkpoint({"task": "char_lm", "config": {}, "vocab": ["a"], "model": {}}, good)
    rebuilt = tmp_path / "rebuilt.pt"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(rebuilt, "w") as target:
        members = source.infolist()
        for info in members:
            packed = method if info.filename.endswith("data.pkl") else zipfile.ZIP_STORED
            target.writestr(info.filename, source.read(info.filename), packed)
    with pytest.raises(UserError, match=rf"has compressed parts \(1 of {len(members)}, "):
        load_checkpoint(rebuilt)


def test_data_referred_to_over_and_over_is_refused_before_it_is_read(
    trained, tmp_path, monkeypatch
):
    """A vocabulary of a million references to one string of a megabyte: 3 MB of pickle, 10^12
    characters once read, whose words were each checked (24 s for a 10 MB file, against 2 s for
    an ordinary one). Refused before any word is looked at; what training writes (the same key
    strings in every record of a history) loads."""
    payload = torch.load(trained["char_lm"], weights_only=True)
    payload["vocab"] = ["y" * 10_000] * 100_000
    shared = tmp_path / "shared.pt"
    shared.write_bytes(_payload_bytes(payload))
    assert shared.stat().st_size < 2**20
    looked_at = []
    monkeypatch.setattr(checkpoint_module, "is_utf8", lambda text: looked_at.append(text))
    with pytest.raises(UserError, match="refers to the same data over and over") as caught:
        load_checkpoint(shared)
    assert str(shared) in str(caught.value) and "1,000,1" in str(caught.value)
    assert looked_at == []
    monkeypatch.undo()
    payload = torch.load(trained["char_lm"], weights_only=True)
    keys = ("step", "val_loss", "learning_rate")
    payload["history"] = [dict(zip(keys, (i, 1.5, 0.1), strict=True)) for i in range(50_000)]
    history = tmp_path / "history.pt"
    history.write_bytes(_payload_bytes(payload))
    assert len(load_checkpoint(history)["history"]) == 50_000


def test_a_format_version_of_hundreds_of_digits_is_shown_cut(trained, tmp_path):
    """The largest integer torch's weights-only reader takes (255 bytes: 603 digits at 2^2000),
    as a format version: the line shows its two ends and its length, not every digit."""
    version = str(2**2000)
    future = tmp_path / "future.pt"
    future.write_bytes(_replaced(trained["char_lm"], format_version=2**2000))
    with pytest.raises(UserError) as caught:
        load_checkpoint(future)
    assert f"has checkpoint format {version[:56]}...{version[-8:]} (603 characters), newer" in str(
        caught.value
    )


def test_a_checkpoint_that_holds_itself_is_refused_and_a_little_sharing_loads(trained, tmp_path):
    """A list that holds itself (a pickle may refer to an object it is still writing): endless
    once read, refused, saying so. A config of YAML aliases, 800 references to one path that
    torch.save keeps shared, makes a small checkpoint expand to more than `MAX_SHARING` times
    what it writes, but by fewer than `MAX_REPEATED_VALUES` values more: it loads."""
    payload = torch.load(trained["captioner"], weights_only=True)
    loop: list = ["a.json"]
    loop.append(loop)
    payload["config"]["data"]["annotations"] = loop
    looped = tmp_path / "looped.pt"
    looped.write_bytes(_payload_bytes(payload))
    with pytest.raises(UserError, match=r"\(\d[\d,]* values written out, endless once read\)"):
        load_checkpoint(looped)
    annotations = ["/data/" + "a" * 200] * 800  # one string, referred to 800 times
    payload["config"]["data"]["annotations"] = annotations
    expanded, written = value_counts(payload)
    assert expanded > checkpoint_module.MAX_SHARING * written  # within the allowance only
    aliased = tmp_path / "aliased.pt"
    aliased.write_bytes(_payload_bytes(payload))
    assert load_checkpoint(aliased)["config"]["data"]["annotations"] == annotations


# --------------------------------------------------------------------------------------------
# Every command that reads checkpoints


def _reader_argv(command: str, checkpoint: Path, trained: dict, tmp_path: Path) -> list[str]:
    image = tmp_path / "scene.png"
    render_random_scene(0, 48)[0].save(image)
    return {
        "char_lm.sample": ["--checkpoint", str(checkpoint), "--prompt", "the", "--length", "5"],
        "char_lm.evaluate": ["--checkpoint", str(checkpoint), "--text", str(trained["text"])],
        "captioner.caption": ["--checkpoint", str(checkpoint), str(image)],
        "captioner.evaluate": [
            "--checkpoint",
            str(checkpoint),
            "--no-meteor",
            "--predictions",
            str(tmp_path / "predictions.json"),
        ],
    }[command]


READERS = {
    "char_lm.sample": ("char_lm", sample.main),
    "char_lm.evaluate": ("char_lm", char_lm_evaluate.main),
    "captioner.caption": ("captioner", caption.main),
    "captioner.evaluate": ("captioner", evaluate.main),
}


def _one_line_error(main, argv: list[str], capsys) -> str:
    capsys.readouterr()
    code = run_cli(main, argv)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("case", list(TAMPERED))
@pytest.mark.parametrize("command", list(READERS))
def test_reading_commands_give_one_line(trained, tmp_path, capsys, command, case):
    task, main = READERS[command]
    checkpoint = _tamper(trained, task, case, tmp_path / "model.pt")
    err = _one_line_error(main, _reader_argv(command, checkpoint, trained, tmp_path), capsys)
    assert str(checkpoint) in err and TAMPERED[case][1] in err and len(err) < 500
    assert not (tmp_path / "predictions.json").exists()
    assert not (trained["root"] / "pwned").exists()


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _resume_argv(task: str, run: Path, trained: dict) -> tuple[Callable, list[str]]:
    if task == "char_lm":
        overrides = [
            f"data.path={trained['text']}",
            "data.url=",
            "data.sha256=",
            "data.val_fraction=0.1",
            "data.block_size=16",
            "data.batch_size=4",
            "train.max_steps=6",
            "train.eval_every=3",
            "train.eval_batches=1",
        ]
        return char_lm_train.main, [
            "--config",
            CHAR_LM_TINY,
            "--out-dir",
            str(run),
            "--resume",
            "--set",
            *overrides,
        ]
    overrides = [
        f"data.annotations={trained['annotations']}",
        "train.max_steps=4",
        "train.eval_max_images=4",
    ]
    return captioner_train.main, [
        "--config",
        CAPTIONER_TINY,
        "--out-dir",
        str(run),
        "--resume",
        "--quiet",
        "--set",
        *overrides,
    ]


@pytest.mark.parametrize("case", list(TAMPERED))
@pytest.mark.parametrize("task", ["char_lm", "captioner"])
def test_resume_from_a_bad_last_checkpoint_overwrites_nothing(
    trained, tmp_path, capsys, task, case
):
    run = tmp_path / "run"
    shutil.copytree(trained[task].parent, run, ignore=shutil.ignore_patterns("features"))
    _tamper(trained, task, case, run / "last.pt")
    before = _snapshot(run)
    main, argv = _resume_argv(task, run, trained)
    err = _one_line_error(main, argv, capsys)
    assert str(run / "last.pt") in err
    assert _snapshot(run) == before  # best.pt and the tampered last.pt alike
    assert not (trained["root"] / "pwned").exists()


def test_resume_from_a_good_checkpoint_still_works(trained, tmp_path, capsys):
    """The control: the same command on an untouched copy resumes (so the errors above are the
    tampering's, not the command's)."""
    for task in ("char_lm", "captioner"):
        run = tmp_path / task
        shutil.copytree(trained[task].parent, run, ignore=shutil.ignore_patterns("features"))
        main, argv = _resume_argv(task, run, trained)
        capsys.readouterr()
        assert run_cli(main, argv) == 0, capsys.readouterr()
        assert (
            load_checkpoint(run / "last.pt", task=task)["step"]
            > load_checkpoint(trained[task])["step"]
        )


# --------------------------------------------------------------------------------------------
# The app: bad checkpoints are listed as unreadable with their reasons; the good ones work


def _texts(at: AppTest) -> list[str]:
    kinds = ("text", "caption", "markdown", "warning", "info", "error")
    return [str(element.value) for kind in kinds for element in getattr(at, kind)]


def test_app_lists_tampered_checkpoints_and_serves_the_good_ones(trained, tmp_path, monkeypatch):
    models = tmp_path / "models"
    shutil.copytree(
        trained["captioner"].parent, models / "captioner", ignore=shutil.ignore_patterns("features")
    )
    shutil.copytree(trained["char_lm"].parent, models / "char_lm")
    bad = {}
    for task in ("captioner", "char_lm"):
        for case, (_, fragment) in TAMPERED.items():
            if case == "other task":  # both tasks are served: not a bad file here
                continue
            name = f"bad/{task} {case}.pt"
            _tamper(trained, task, case, models / name)
            bad[name] = fragment or "do not fit its config"
    monkeypatch.setenv(ENV_VAR, str(models))
    monkeypatch.setattr(sys, "argv", ["app.py"])
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    texts = _texts(at)
    for name, fragment in bad.items():
        assert any(name in text and fragment in text for text in texts), (name, texts)
    assert at.selectbox(key="captioner_checkpoint").options == [
        "captioner/best.pt",
        "captioner/last.pt",
    ]
    at.button(key="random_scene").click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.subheader and at.subheader[0].value  # the good captioner captioned the scene

    at.radio(key="page").set_value("Generate text")
    at.run()
    assert at.selectbox(key="char_lm_checkpoint").options == ["char_lm/best.pt", "char_lm/last.pt"]
    at.text_area(key="prompt").set_value("the ")
    at.button(key="generate").click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.code[0].value.strip().startswith("the") and len(at.code[0].value) > len("the ")
    assert not (trained["root"] / "pwned").exists()
