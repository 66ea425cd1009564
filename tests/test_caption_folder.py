"""`python -m captioner.caption` over a folder or a glob: every image captioned in batches,
unreadable files reported and skipped, non-image files ignored, and a CSV the training loader reads.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from captioner import caption
from captioner.data import load_csv, load_image
from captioner.inference import caption_files, caption_images, find_images, load_captioner
from recurrent.errors import RunStopped, UserError, run_cli
from tests.tiny_models import train_tiny_captioner

ROOT = Path(__file__).resolve().parents[1]
MANY = 600  # images of the stopped job


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, scenes_annotations: Path) -> Path:
    return train_tiny_captioner(tmp_path_factory.mktemp("run"), scenes_annotations)


@pytest.fixture
def folder(tmp_path: Path, scenes_annotations: Path) -> Path:
    """3 scene images (PNG, JPEG, PNG with an upper-case extension), 1 broken file, 1 text file."""
    images = sorted((scenes_annotations.parent / "images").glob("*.png"))
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(images[0], folder / "a.png")
    load_image(images[1]).save(folder / "b.jpg")
    shutil.copy(images[2], folder / "c.PNG")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("not an image", encoding="utf-8")
    return folder


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = run_cli(caption.main, argv)
    out, err = capsys.readouterr()
    return code, out, err


def expected_captions(checkpoint: Path, paths: list[Path]) -> list[str]:
    captioner = load_captioner(str(checkpoint))
    results = caption_images(captioner, [load_image(p) for p in paths], beam_size=3)
    return [result.caption for result in results]


def test_folder_gives_a_caption_per_image_and_one_warning(checkpoint, folder, capsys):
    images = [folder / "a.png", folder / "b.jpg", folder / "c.PNG"]
    # --batch-size 2: the broken file falls in the second batch, which still has an image
    code, out, err = run_main(
        ["--checkpoint", str(checkpoint), str(folder), "--batch-size", "2"], capsys
    )
    assert code == 0
    lines = [line.split("\t") for line in out.splitlines()]
    assert [path for path, _ in lines] == [str(p) for p in images]  # sorted, notes.txt ignored
    assert [text for _, text in lines] == expected_captions(checkpoint, images)
    warnings = err.strip().splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("warning: skipped ")
    assert "broken.png" in warnings[0] and "notes.txt" not in err


def test_a_name_holding_a_tab_a_line_break_or_a_quote_stays_one_line_of_its_fields(
    checkpoint, folder, capsys
):
    """`path<TAB>caption` lines: a file's name may hold a tab, a line break or a double quote,
    which made its line two lines, or three fields. Such a name is quoted as CSV quotes it, so
    that a tab-separated reader (csv's) gets the path and the caption back as written, with
    --n-best too, over lines split by str.splitlines too (a form feed or U+2028 in a name ended
    its line there) or by a file's own reading; other names are written as they are."""
    odd = [folder / "tab\there.png", folder / "line\nbreak.png", folder / 'say "cheese".png']
    odd += [folder / "form\ffeed.png", folder / "line\u2028separator.png"]
    for path in odd:
        shutil.copy(folder / "a.png", path)
    images = sorted([folder / "a.png", folder / "b.jpg", folder / "c.PNG", *odd])
    code, out, _ = run_main(["--checkpoint", str(checkpoint), str(folder)], capsys)
    assert code == 0
    rows = list(csv.reader(out.splitlines(keepends=True), delimiter="\t"))
    assert rows == [
        [str(path), text]
        for path, text in zip(images, expected_captions(checkpoint, images), strict=True)
    ]
    assert list(csv.reader(io.StringIO(out, newline=""), delimiter="\t")) == rows
    assert out.splitlines()[0] == f"{folder / 'a.png'}\t{rows[0][1]}"  # as it is
    argv = ["--checkpoint", str(checkpoint), str(odd[0]), "--n-best", "2", "--beam-size", "2"]
    code, out, _ = run_main(argv, capsys)
    rows = list(csv.reader(out.splitlines(keepends=True), delimiter="\t"))
    assert (
        code == 0
        and [len(row) for row in rows] == [3, 3]
        and {row[0] for row in rows} == {str(odd[0])}
    )


def test_csv_loads_back_with_the_training_loader(checkpoint, folder, tmp_path, capsys):
    out_csv = tmp_path / "review" / "captions.csv"
    out_csv.parent.mkdir()
    code, out, err = run_main(
        ["--checkpoint", str(checkpoint), str(folder / "*"), "--csv", str(out_csv), "--json"],
        capsys,
    )
    assert code == 0
    payload = json.loads(out)
    assert [item["image"] for item in payload["results"]] == [
        str(folder / name) for name in ("a.png", "b.jpg", "c.PNG")
    ]
    assert [item["image"] for item in payload["skipped"]] == [str(folder / "broken.png")]
    assert f"wrote 3 captions to {out_csv}" in err
    records = load_csv(out_csv, test_fraction=0.0, val_fraction=0.0)  # images must exist
    assert {r.image_path: r.captions for r in records} == {
        item["image"]: (item["caption"],) for item in payload["results"]
    }
    header, first, *_ = out_csv.read_text(encoding="utf-8").splitlines()
    relative = os.path.relpath(folder / "a.png", out_csv.parent)  # the folder moves with them
    assert header == "image,caption" and first.startswith(f"{relative},") and ".." in relative


def test_csv_warns_of_the_empty_captions_it_writes(
    checkpoint, folder, tmp_path, capsys, monkeypatch
):
    """A model that ends a caption at once gives an empty row, which the training loader refuses
    until it is filled in: the command says how many there are."""
    real = caption.caption_files

    def first_one_empty(*args, **kwargs):
        for index, (path, result) in enumerate(real(*args, **kwargs)):
            yield path, dataclasses.replace(result, caption="") if index == 0 else result

    monkeypatch.setattr(caption, "caption_files", first_one_empty)
    out_csv = tmp_path / "captions.csv"
    code, _, err = run_main(
        ["--checkpoint", str(checkpoint), str(folder), "--csv", str(out_csv)], capsys
    )
    assert code == 0
    assert "warning: 1 of them are empty" in err
    with pytest.raises(UserError, match="line 2 has an empty image or caption"):
        load_csv(out_csv, test_fraction=0.0, val_fraction=0.0)


def test_named_files_still_stop_and_empty_folders_are_errors(checkpoint, folder, tmp_path, capsys):
    code, _, err = run_main(["--checkpoint", str(checkpoint), str(folder / "broken.png")], capsys)
    assert code == 2 and err.startswith("error: ") and "broken.png" in err
    assert len(err.strip().splitlines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("no images here", encoding="utf-8")
    for argument in (str(empty), str(tmp_path / "nothing" / "*.jpg")):
        code, _, err = run_main(["--checkpoint", str(checkpoint), argument], capsys)
        assert code == 2 and "no image files" in err and len(err.strip().splitlines()) == 1
        assert "subfolders" not in err  # it has none
    # images in subfolders (Kaggle's Flickr8k/Images): folders are read at their top level only,
    # and the line gives the pattern that reaches below, which then captions them
    nested = tmp_path / "kaggle"
    (nested / "Images").mkdir(parents=True)
    good = next(path for path in sorted(folder.iterdir()) if path.name != "broken.png")
    shutil.copy(good, nested / "Images" / "a.jpg")
    code, _, err = run_main(["--checkpoint", str(checkpoint), str(nested)], capsys)
    assert code == 2 and f"or '{nested}/**/*' for those in its subfolders" in err
    code, out, _ = run_main(["--checkpoint", str(checkpoint), f"{nested}/**/*"], capsys)
    assert code == 0 and out.startswith(str(nested / "Images" / "a.jpg"))
    only_broken = tmp_path / "only_broken"
    only_broken.mkdir()
    shutil.copy(folder / "broken.png", only_broken / "x.png")
    code, _, err = run_main(["--checkpoint", str(checkpoint), str(only_broken)], capsys)
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: none of the 1 image")


def test_find_images_by_extension_and_glob(folder):
    assert find_images(str(folder)) == [
        str(folder / name) for name in ("a.png", "b.jpg", "broken.png", "c.PNG")
    ]
    assert find_images(str(folder / "*.png")) == [str(folder / n) for n in ("a.png", "broken.png")]
    assert find_images(str(folder.parent / "**" / "*.jpg")) == [str(folder / "b.jpg")]
    assert find_images(str(folder / "missing")) == []


def test_find_images_recurses_only_under_a_double_star_and_takes_image_files_only(tmp_path):
    """A folder gives its own image files; ``**`` reaches every depth; a folder named like an
    image and a file of a format Pillow only writes (PDF) are no images."""
    from PIL import Image

    nested = tmp_path / "photos" / "2024" / "june"
    nested.mkdir(parents=True)
    for path in (tmp_path / "photos" / "top.jpg", nested / "deep.jpg"):
        Image.new("RGB", (4, 4)).save(path)
    (tmp_path / "photos" / "album.jpg").mkdir()  # a folder
    Image.new("RGB", (4, 4)).save(tmp_path / "photos" / "scan.pdf")  # written, not read, by Pillow
    assert find_images(str(tmp_path / "photos")) == [str(tmp_path / "photos" / "top.jpg")]
    assert find_images(str(tmp_path / "photos" / "**" / "*.jpg")) == [
        str(nested / "deep.jpg"),
        str(tmp_path / "photos" / "top.jpg"),
    ]
    assert find_images(str(tmp_path / "photos" / "*")) == [str(tmp_path / "photos" / "top.jpg")]


def test_a_bad_file_named_beside_its_folder_still_stops(checkpoint, folder, capsys):
    """A file named on the command line stops the command even when a folder given too holds it
    (found in the folder alone it is skipped with a warning)."""
    broken = str(folder / "broken.png")
    for argv in ([str(folder), broken], [broken, str(folder)]):
        code, out, err = run_main(["--checkpoint", str(checkpoint), *argv], capsys)
        assert code == 2 and "warning" not in err, err
        assert err.startswith("error: ") and broken in err and len(err.strip().splitlines()) == 1


def test_a_named_file_that_stops_a_csv_job_keeps_the_captions_before_it(
    checkpoint, folder, tmp_path, capsys
):
    """A file named on the command line that cannot be read stops the command, as it did; with
    --csv the captions of the images before it were lost (the CSV is written at the end, or every
    minute). They are kept now, and the line says so: the command run again without the file and
    with --resume gives the CSV of a run that never met it."""
    good = [str(folder / name) for name in ("a.png", "b.jpg", "c.PNG")]
    whole = tmp_path / "whole.csv"
    common = ["--checkpoint", str(checkpoint), "--batch-size", "1"]
    assert run_main([*common, *good, "--csv", str(whole)], capsys)[0] == 0
    out = tmp_path / "captions.csv"
    broken = str(folder / "broken.png")  # there, but no image: met where it stands in the list
    with pytest.raises(UserError) as said:
        load_image(broken)
    code, _, err = run_main([*common, *good[:2], broken, good[2], "--csv", str(out)], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert err == (
        f"error: {said.value}; {out} holds the captions of the 2 images before it: mend the "
        "file or leave it out, and run the command with --resume to caption the rest\n"
    )
    assert _rows(out) == _rows(whole)[:2]
    code, _, err = run_main([*common, *good, "--csv", str(out), "--resume"], capsys)
    assert code == 0 and "resuming: 2 images are captioned" in err
    assert _rows(out) == _rows(whole)
    first = tmp_path / "first.csv"  # nothing captioned before it: its own line, no CSV
    code, _, err = run_main([*common, broken, *good, "--csv", str(first)], capsys)
    assert (code, err) == (2, f"error: {said.value}\n")
    assert not first.exists()


def test_a_named_file_stops_a_csv_job_alike_whatever_the_batch_size(
    checkpoint, folder, tmp_path, capsys
):
    """The images before the unreadable named file in its own batch were read but not captioned:
    with --batch-size 2 the CSV lost them (and the line miscounted them), and with the bad file in
    the first batch (the default holds 16) no CSV was written at all. Any batch size now gives
    what --batch-size 1 gives: the same lines, the same one-line error, the same CSV."""
    good = [str(folder / name) for name in ("a.png", "b.jpg", "c.PNG")]
    missing = str(folder / "broken.png")  # there, but no image (a missing file stops at once)
    for images in ([good[0], missing, *good[1:]], [*good, missing]):
        outputs = []
        for size in ("1", "2", "16"):
            out = tmp_path / f"captions_{size}.csv"
            code, lines, err = run_main(
                ["--checkpoint", str(checkpoint), *images, "--csv", str(out), "--batch-size", size],
                capsys,
            )
            outputs.append((code, lines, err.replace(str(out), "OUT"), _rows(out)))
        code, _, _, rows = outputs[0]
        before = images[: images.index(missing)]
        assert code == 2 and [image for image, _ in rows] == [
            os.path.relpath(image, tmp_path) for image in before
        ]
        assert outputs[1] == outputs[0] and outputs[2] == outputs[0]


def test_a_list_of_paths_captions_as_the_same_arguments_do(
    checkpoint, folder, tmp_path, capsys, monkeypatch
):
    """--list FILE (or - for the standard input): its lines, relative to the current folder as
    find prints them (CRLF, blank lines and all), give the output the same paths as arguments
    give; a list that is missing, a folder or empty, or no images at all, is one line."""
    monkeypatch.chdir(folder.parent)
    names = ["photos/a.png", "photos/c.PNG", str(folder / "b.jpg")]
    common = ["--checkpoint", str(checkpoint)]
    code, expected, _ = run_main([*common, *names], capsys)
    assert code == 0 and len(expected.splitlines()) == 3
    listed = tmp_path / "list.txt"
    listed.write_bytes(("\r\n".join(names[1:]) + "\r\n\n  \n").encode())
    assert run_main([*common, names[0], "--list", str(listed)], capsys)[:2] == (0, expected)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("\n".join(names).encode())))
    assert run_main([*common, "--list", "-"], capsys)[:2] == (0, expected)
    (tmp_path / "blank.txt").write_text("\n \n")
    for argv, said in (
        (["--list", str(tmp_path / "gone.txt")], f"--list {tmp_path / 'gone.txt'}: file not found"),
        (["--list", str(folder)], f"--list {folder} is a folder; pass it as an IMAGE argument"),
        (
            ["--list", str(tmp_path / "blank.txt")],
            f"--list {tmp_path / 'blank.txt'} names no image",
        ),
        ([names[0], "--list", str(tmp_path / "blank.txt")], "--list "),  # an empty folder's way
        ([], "no images to caption; pass image files, folders or patterns, or --list"),
    ):
        code, _, err = run_main([*common, *argv], capsys)
        assert code == 2 and err.startswith(f"error: {said}") and err.count("\n") == 1, err


def test_missing_named_files_stop_the_command_before_the_model_loads(
    checkpoint, folder, tmp_path, capsys, monkeypatch
):
    """A --list of a data set's images with a line naming no file stopped the command only when
    its turn came, after the model loaded and the images before it were captioned. Every named
    file (arguments and --list) is looked for first: a missing one is load_image's own line, and
    more than one are counted, before the model loads (the checkpoint is never opened) and before
    anything is printed or written. A file there but unreadable is not its business, and --resume
    looks only for the files it has still to caption."""
    good = [str(folder / name) for name in ("a.png", "b.jpg", "c.PNG")]
    gone = [str(folder / f"gone{i}.png") for i in range(3)]
    listed = tmp_path / "list.txt"
    listed.write_text("\n".join([gone[1], good[2], gone[2]]) + "\n", encoding="utf-8")
    out = tmp_path / "out.csv"
    opened = []
    real_load = caption.load_ensemble
    monkeypatch.setattr(caption, "load_ensemble", lambda *a: opened.append(a) or real_load(*a))
    common = ["--checkpoint", str(checkpoint), "--csv", str(out)]
    code, lines, err = run_main([*common, *good[:2], gone[0], "--list", str(listed)], capsys)
    assert (code, lines, opened, out.exists()) == (2, "", [], False)
    assert err == (
        f"error: image file '{gone[0]}' not found, nor are 2 more of the 6 files named; check "
        "the paths\n"
    )
    with pytest.raises(UserError) as said:
        load_image(gone[2])
    code, lines, err = run_main([*common, good[0], gone[2]], capsys)
    assert (code, lines, err, opened) == (2, "", f"error: {said.value}\n", [])
    # a named file there but unreadable is met in its turn, once the model has loaded
    code, lines, _ = run_main([*common, good[0], str(folder / "broken.png"), good[1]], capsys)
    assert code == 2 and len(lines.splitlines()) == 1 and len(opened) == 1
    # --resume: a captioned image deleted since is not looked for
    assert run_main([*common, *good], capsys)[0] == 0
    os.remove(good[0])
    code, _, err = run_main([*common, *good, "--resume"], capsys)
    assert code == 0 and "resuming: 3 images are captioned in" in err, err


def test_a_named_file_that_cannot_be_looked_up_is_not_called_missing(checkpoint, folder, capsys):
    """The look for missing named files before the model loads took every path os.path.exists
    denies for missing: a link that loops, a name too long (and a folder it may not search, for a
    user who is not root) were 'not found; check the path'. Only a file that is not there is
    missing; these say why they cannot be read, as load_image says it (the reference), and a
    broken link is missing."""
    loop = folder / "loop.png"
    loop.symlink_to(loop)
    broken = folder / "broken_link.png"
    broken.symlink_to(folder / "gone.png")
    long = folder / ("x" * 300 + ".png")
    for path in (loop, long, broken):
        with pytest.raises(UserError) as said:
            load_image(str(path))
        code, out, err = run_main(["--checkpoint", str(checkpoint), str(path)], capsys)
        assert (code, out, err) == (2, "", f"error: {said.value}\n")
    assert "not found" in str(said.value)  # the broken link's


class _Terminal(io.BytesIO):
    def isatty(self) -> bool:
        return True


def test_a_list_holds_any_name_a_file_may_have_and_more_than_one_list_adds_up(
    checkpoint, folder, tmp_path, capsys, monkeypatch
):
    """A list line ends at LF or CRLF alone: a name may hold a form feed, U+0085 or U+2028 (which
    str.splitlines split at), and spaces at either end. A UTF-8 BOM (Notepad's) is no part of the
    first name; a NUL byte (UTF-16 text, find -print0) is one line, not a traceback. --list given
    twice reads both lists, in order (the first was dropped); - twice is one line. Read from a
    terminal, a line on stderr says how to end the list rather than a silent wait."""
    monkeypatch.chdir(folder)
    odd = ["a\fb.png", "c\u2028d.png", "e\u0085f.png", " g .png"]
    for name, source in zip(odd, ("a.png", "b.jpg", "c.PNG", "a.png"), strict=True):
        shutil.copy(source, name)
    common = ["--checkpoint", str(checkpoint)]
    code, expected, _ = run_main([*common, *odd, "b.jpg"], capsys)
    assert code == 0 and expected.count("\n") == 5
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    first.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(odd[:2]).encode())
    second.write_bytes("\n".join([*odd[2:], "b.jpg"]).encode() + b"\n")
    argv = [*common, "--list", str(first), "--list", str(second)]
    assert run_main(argv, capsys)[:2] == (0, expected)
    terminal = io.TextIOWrapper(_Terminal("\n".join([*odd, "b.jpg"]).encode()))
    monkeypatch.setattr(sys, "stdin", terminal)
    code, out, err = run_main([*common, "--list", "-"], capsys)
    assert (code, out) == (0, expected) and "end with Ctrl-D" in err
    utf16 = tmp_path / "utf16.txt"
    utf16.write_bytes("a.png\r\nb.jpg\r\n".encode("utf-16"))
    for argv, said in (
        (["--list", str(utf16)], f"--list {utf16}: line 1 holds a NUL byte"),
        (["--list", "-", "--list", "-"], "--list - is given twice"),
    ):
        code, _, err = run_main([*common, *argv], capsys)
        assert code == 2 and err.startswith(f"error: {said}") and err.count("\n") == 1, err


def test_a_listed_name_is_read_as_the_file_system_holds_it(checkpoint, folder, tmp_path, capsys):
    """A listed name that is not UTF-8 is the file of that name, as an argument's is: captioned
    without --csv, refused in one line with it. A list that cannot be read is one line."""
    odd = os.fsdecode(b"odd\xff.png")
    shutil.copy(folder / "a.png", folder / odd)
    listed = tmp_path / "list.txt"
    listed.write_bytes(os.fsencode(str(folder / odd)) + b"\n")
    code, out, _ = run_main(_caption(checkpoint, "--list", str(listed), "--json"), capsys)
    assert code == 0 and [result["image"] for result in json.loads(out)["results"]] == [
        str(folder / odd)
    ]
    csv_out = str(tmp_path / "captions.csv")
    code, _, err = run_main(_caption(checkpoint, "--list", str(listed), "--csv", csv_out), capsys)
    assert code == 2 and err.count("\n") == 1 and "caption it without --csv" in err, err
    inside_a_file = str(folder / "a.png" / "list.txt")
    code, _, err = run_main(_caption(checkpoint, "--list", inside_a_file), capsys)
    assert (code, err) == (2, f"error: cannot read --list {inside_a_file} (Not a directory)\n")


def test_caption_files_yields_the_images_before_a_stopping_file_whatever_the_batch_size(
    checkpoint, folder
):
    """Without on_error an unreadable file raises, after the images before it, those of its own
    batch too, are yielded: as a batch of one gives them."""
    captioner = load_captioner(str(checkpoint))
    paths = [str(folder / "a.png"), str(folder / "b.jpg"), str(folder / "gone.png")]
    given = {}
    for size in (1, 3):
        given[size] = []
        with pytest.raises(UserError, match="gone.png"):
            for path, result in caption_files(captioner, [*paths, paths[0]], batch_size=size):
                given[size].append((path, result.caption))
    assert [path for path, _ in given[1]] == paths[:2] and given[3] == given[1]


@pytest.mark.parametrize("size", ["0", "-3"])
def test_a_batch_size_below_one_is_a_one_line_error(checkpoint, folder, size, capsys):
    code, out, err = run_main(
        ["--checkpoint", str(checkpoint), str(folder), "--batch-size", size], capsys
    )
    assert (code, out) == (2, "")
    assert err == f"error: --batch-size must be at least 1, got {size}\n"


# --------------------------------------------------------------------------------------------
# A long captioning job stopped and resumed: --csv keeps what was captioned, --resume goes on


@pytest.fixture
def many(tmp_path: Path, scenes_annotations: Path) -> Path:
    """A folder of MANY images: the scenes' 24, each under 25 names."""
    images = sorted((scenes_annotations.parent / "images").glob("*.png"))
    folder = tmp_path / "many"
    folder.mkdir()
    for copy in range(MANY // 24):
        for image in images:
            os.link(image, folder / f"{copy:02d}_{image.name}")
    return folder


def _rows(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="", encoding="utf-8") as stream:
        return [tuple(row) for row in csv.reader(stream)][1:]


def test_a_stopped_job_keeps_its_captions_and_resume_captions_the_rest(
    checkpoint, many, tmp_path, capsys
):
    """SIGTERM (a scheduler, `kill`) in the middle of captioning a folder: the CSV holds every
    image captioned so far, the one line says so and names --resume, which captions only the
    rest: the CSV then equals the one of a job that was never stopped."""
    whole = tmp_path / "whole.csv"
    assert (
        run_main(["--checkpoint", str(checkpoint), str(many), "--csv", str(whole)], capsys)[0] == 0
    )
    out = tmp_path / "captions.csv"
    argv = ["--checkpoint", str(checkpoint), str(many), "--csv", str(out), "--batch-size", "1"]
    process = subprocess.Popen(
        [sys.executable, "-m", "captioner.caption", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
    )
    try:
        for _ in range(5):  # five images captioned: it is at work
            assert process.stdout.readline()
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 143, err
    [line] = [line for line in err.splitlines() if line.startswith("stopped:")]
    captioned = len(_rows(out))
    assert 5 <= captioned < MANY, err
    assert line == (
        f"stopped: SIGTERM after {captioned} of {MANY} images; {out} holds their captions: run the "
        "same command with --resume to caption the rest"
    )
    assert _rows(out) == _rows(whole)[:captioned]  # the same order, the same captions

    code, stdout, err = run_main([*argv, "--resume"], capsys)
    assert code == 0, err
    assert f"resuming: {captioned} images are captioned in {out}, {MANY - captioned} to go" in err
    assert len(stdout.splitlines()) == MANY - captioned  # only the rest
    assert _rows(out) == _rows(whole)
    code, stdout, err = run_main([*argv, "--resume"], capsys)  # nothing left: nothing to do
    assert (code, stdout) == (0, "") and f"{MANY} images are captioned" in err and "0 to go" in err
    assert _rows(out) == _rows(whole)


def test_the_csv_is_written_as_it_goes(checkpoint, folder, tmp_path, capsys, monkeypatch):
    """Rewritten every CSV_SAVE_EVERY_S while captioning: a job killed outright (here a failure
    after two images) leaves the captions written so far."""
    real = caption.caption_files

    def two_then_fail(*args, **kwargs):
        for number, item in enumerate(real(*args, **kwargs)):
            if number == 2:
                raise RuntimeError("killed")
            yield item

    monkeypatch.setattr(caption, "CSV_SAVE_EVERY_S", 0.0)
    monkeypatch.setattr(caption, "caption_files", two_then_fail)
    out = tmp_path / "captions.csv"
    with pytest.raises(RuntimeError, match="killed"):
        caption.main(["--checkpoint", str(checkpoint), str(folder), "--csv", str(out)])
    expected = expected_captions(checkpoint, [folder / "a.png", folder / "b.jpg"])
    assert _rows(out) == [("photos/a.png", expected[0]), ("photos/b.jpg", expected[1])]


def test_resume_needs_the_csv_it_goes_on_with(checkpoint, folder, tmp_path, capsys):
    code, _, err = run_main(["--checkpoint", str(checkpoint), str(folder), "--resume"], capsys)
    assert code == 2
    assert err == "error: --resume goes on with the file of --csv; pass the same --csv OUT.csv\n"
    other = tmp_path / "other.csv"
    other.write_text("path,text\nx.png,a caption\n", encoding="utf-8")
    argv = ["--checkpoint", str(checkpoint), str(folder), "--csv", str(other), "--resume"]
    code, _, err = run_main(argv, capsys)
    assert code == 2 and err.startswith("error: --resume: ") and err.count("\n") == 1, err
    assert "has no column 'image' or 'caption'" in err


# --------------------------------------------------------------------------------------------
# --csv and --resume against what a user's files can be (a bug hunt's findings)


def _caption(checkpoint: Path, *args: str) -> list[str]:
    return ["--checkpoint", str(checkpoint), *args]


def test_a_name_the_csv_cannot_hold_is_skipped_or_refused(checkpoint, folder, tmp_path, capsys):
    """A file name that is not UTF-8 ended the job with a UnicodeEncodeError traceback and no CSV
    (also on a stop): found in a folder it is skipped with a warning, named it stops the command
    before any captioning."""
    odd = folder / os.fsdecode(b"odd\xff.png")
    shutil.copy(folder / "a.png", odd)
    out = tmp_path / "captions.csv"
    code, stdout, err = run_main(_caption(checkpoint, str(folder), "--csv", str(out)), capsys)
    assert code == 0, err
    assert "warning: skipped " in err and "odd\ufffd.png: its name is not UTF-8" in err
    assert [image for image, _ in _rows(out)] == ["photos/a.png", "photos/b.jpg", "photos/c.PNG"]
    code, stdout, err = run_main(_caption(checkpoint, str(odd), "--csv", str(out)), capsys)
    assert code == 2 and stdout == "" and err.count("\n") == 1
    assert err.startswith("error: ") and "caption it without --csv" in err
    # a folder whose only image has such a name: nothing left, and said so ("none of the 0 image
    # files could be read")
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(odd, alone / odd.name)
    code, stdout, err = run_main(_caption(checkpoint, str(alone), "--csv", str(out)), capsys)
    assert (
        code == 2
        and stdout == ""
        and err.endswith(
            "error: no image is left to caption (see the warnings); rename the images they name\n"
        )
    )


def test_the_csv_never_replaces_an_input_a_link_or_a_special_file(
    checkpoint, folder, tmp_path, capsys
):
    """--csv naming one of the images wrote the CSV over it; a link was replaced by a file and a
    pipe by a file (a reader of the pipe waited for ever; /dev/full as root was replaced)."""
    image = folder / "a.png"
    before = image.read_bytes()
    code, _, err = run_main(_caption(checkpoint, str(folder), "--csv", str(image)), capsys)
    assert code == 2 and "is one of the images to caption" in err and image.read_bytes() == before
    real = tmp_path / "real.csv"
    real.write_text("image,caption\n", encoding="utf-8")
    link = tmp_path / "link.csv"
    link.symlink_to(real)
    assert run_main(_caption(checkpoint, str(image), "--csv", str(link)), capsys)[0] == 0
    assert link.is_symlink() and len(_rows(real)) == 1
    pipe = tmp_path / "pipe.csv"
    os.mkfifo(pipe)
    code, _, err = run_main(_caption(checkpoint, str(image), "--csv", str(pipe)), capsys)
    assert code == 2 and err.count("\n") == 1 and "not a regular file" in err, err
    for bad, said in (("", "--csv is empty"), (str(tmp_path / "new") + "/", "is a folder")):
        code, _, err = run_main(_caption(checkpoint, str(image), "--csv", bad), capsys)
        assert code == 2 and said in err, err


def test_resume_keeps_a_split_column_and_refuses_columns_it_would_drop(
    checkpoint, folder, tmp_path, capsys
):
    out = tmp_path / "captions.csv"
    argv = _caption(checkpoint, str(folder), "--csv", str(out))
    assert run_main(argv, capsys)[0] == 0
    whole = _rows(out)
    with out.open("w", newline="", encoding="utf-8") as stream:  # a split given, a row taken out
        csv.writer(stream).writerows([["image", "caption", "split"]])
        csv.writer(stream).writerows([[*row, "train"] for row in whole[:2]])
    code, _, err = run_main([*argv, "--resume"], capsys)
    assert code == 0 and "2 images are captioned" in err and "2 to go" in err, err  # broken.png
    assert _rows(out) == [(*whole[0], "train"), (*whole[1], "train"), (*whole[2], "")]
    out.write_text("image,caption,notes\nphotos/a.png,a caption,mine\n", encoding="utf-8")
    code, _, err = run_main([*argv, "--resume"], capsys)
    assert code == 2 and "(notes)" in err and err.count("\n") == 1, err
    out.write_text("image,caption\n,an orphan caption\n", encoding="utf-8")
    code, _, err = run_main([*argv, "--resume"], capsys)
    assert code == 2 and "names no image" in err, err
    out.write_text('image,caption\nphotos/a.png,"a quote left open\nphotos/b.jpg,x\n')
    code, _, err = run_main([*argv, "--resume"], capsys)
    assert code == 2 and "fix the CSV quoting" in err, err  # it swallowed the rows after it


def test_resume_finds_names_with_spaces_and_files_under_other_spellings(
    checkpoint, folder, tmp_path, capsys, monkeypatch
):
    """A name beginning with a space was read back stripped: captioned again at every --resume,
    with a row naming no file. One file given twice (./x and its absolute path), or through a
    linked folder on --resume, had two rows."""
    shutil.copy(folder / "a.png", folder / " lead.png")
    (folder / "broken.png").unlink()
    monkeypatch.chdir(tmp_path)
    argv = _caption(checkpoint, "photos", "./photos/a.png", str(folder / "b.jpg"), "--csv", "c.csv")
    code, _, err = run_main(argv, capsys)
    assert code == 0 and "wrote 4 captions" in err, err  # " lead.png", a.png, b.jpg, c.PNG
    rows = _rows(Path("c.csv"))
    assert [image for image, _ in rows] == [
        "photos/ lead.png", "photos/a.png", "photos/b.jpg", "photos/c.PNG"
    ]  # fmt: skip
    (tmp_path / "linked").symlink_to(folder)
    code, stdout, err = run_main(
        _caption(checkpoint, "linked", "--csv", "c.csv", "--resume"), capsys
    )
    assert code == 0 and "4 images are captioned in c.csv, 0 to go" in err and stdout == "", err
    assert _rows(Path("c.csv")) == rows
    records = load_csv(Path("c.csv"), val_fraction=0.0, test_fraction=0.0)
    assert sorted(Path(record.image_path).name for record in records) == [
        " lead.png", "a.png", "b.jpg", "c.PNG"
    ]  # fmt: skip


def test_resume_with_only_unreadable_files_left_or_nothing_left(
    checkpoint, folder, tmp_path, capsys
):
    """Only the folder's broken file left to caption: --resume ended with "none of the 1 image
    files could be read" (exit 2), where the run that was never stopped ends well; --json with
    nothing left printed no JSON at all."""
    out = tmp_path / "captions.csv"
    argv = _caption(checkpoint, str(folder), "--csv", str(out))
    assert run_main(argv, capsys)[0] == 0
    whole = _rows(out)
    code, _, err = run_main([*argv, "--resume"], capsys)
    assert code == 0 and "1 to go" in err and "warning: skipped" in err, err
    assert _rows(out) == whole
    (folder / "broken.png").unlink()
    code, stdout, err = run_main([*argv, "--resume", "--json"], capsys)
    assert code == 0 and "0 to go" in err, err
    payload = json.loads(stdout)
    assert payload["results"] == [] and payload["skipped"] == []


def test_a_stop_after_the_last_image_still_writes_the_csv(
    checkpoint, folder, tmp_path, capsys, monkeypatch
):
    """The CSV was written after the captioning loop, outside the stop's handling: a SIGTERM
    landing there (after the last image, say while the file was written) lost every caption."""
    from recurrent.errors import RunStopped

    real, calls = caption.write_csv, []

    def stopped_while_writing(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:  # the write after the last image
            raise RunStopped("SIGTERM; ...", exit_code=143)
        real(*args, **kwargs)

    monkeypatch.setattr(caption, "write_csv", stopped_while_writing)
    out = tmp_path / "captions.csv"
    code, _, err = run_main(_caption(checkpoint, str(folder), "--csv", str(out)), capsys)
    assert code == 143 and len(_rows(out)) == 3
    assert f"stopped: SIGTERM after 3 of 4 images; {out} holds their captions" in err, err


def test_a_second_command_writing_the_same_csv_is_refused(
    checkpoint, folder, tmp_path, capsys, lock_held
):
    """Two jobs writing one CSV at once each rewrote it whole: one's rows were lost, and neither
    said a word."""
    out = tmp_path / "captions.csv"
    release = lock_held(tmp_path, ".captions.csv.lock")
    code, _, err = run_main(_caption(checkpoint, str(folder), "--csv", str(out)), capsys)
    release()
    assert code == 2 and "is being written by another caption command (process" in err, err
    assert not out.exists()


def test_one_file_under_several_spellings_is_one_image_under_its_first(
    folder, tmp_path, monkeypatch
):
    """expand_inputs merges one file given as a relative path, through a linked folder and as an
    absolute path, and keeps the spelling it was first given under (kills: realpath->abspath in
    either branch, setdefault->assignment, returning the realpaths instead of the spellings)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "linked").symlink_to(folder)
    paths, _ = caption.expand_inputs(
        ["photos/a.png", "linked", "linked/b.jpg", str(folder / "a.png")]
    )
    assert paths == ["photos/a.png", "linked/b.jpg", "linked/broken.png", "linked/c.PNG"]


def test_resume_reads_back_a_split_column_a_spreadsheets_header_and_a_leading_space(tmp_path):
    """write_csv's split column is named 'split' (what load_csv reads); read_captioned reads it
    back, accepts the header a spreadsheet re-saves (a BOM, capitals, spaces) as load_csv does,
    keeps a name that begins with a space, and refuses a row whose image is only blanks."""
    out = tmp_path / "captions.csv"
    image, spaced = str(tmp_path / "a.png"), str(tmp_path / " lead.png")
    caption.write_csv(str(out), [(image, "a cat"), (spaced, "a dog")], {image: "train"})
    with out.open(newline="", encoding="utf-8") as stream:
        assert list(csv.reader(stream)) == [
            ["image", "caption", "split"], ["a.png", "a cat", "train"], [" lead.png", "a dog", ""]
        ]  # fmt: skip
    assert caption.read_captioned(str(out)) == (
        [(image, "a cat"), (spaced, "a dog")], {image: "train", spaced: ""}
    )  # fmt: skip
    out.write_text("\ufeffImage, Caption\na.png,a cat\n", encoding="utf-8")
    assert caption.read_captioned(str(out)) == ([(image, "a cat")], None)
    out.write_text("image,caption\n   ,an orphan caption\n", encoding="utf-8")
    with pytest.raises(UserError, match="names no image"):
        caption.read_captioned(str(out))


def test_a_csv_that_is_an_input_under_another_spelling_is_refused(
    checkpoint, folder, tmp_path, capsys
):
    """--csv naming an image through a link, or an image given through a linked folder: the CSV
    would be written over the image (atomic_write writes through links)."""
    image = folder / "a.png"
    before = image.read_bytes()
    (tmp_path / "linked").symlink_to(folder)
    link = tmp_path / "out.csv"
    link.symlink_to(image)
    for images, out in ((str(tmp_path / "linked"), str(image)), (str(folder), str(link))):
        code, _, err = run_main(_caption(checkpoint, images, "--csv", out), capsys)
        assert code == 2 and "is one of the images to caption" in err, err
        assert image.read_bytes() == before


def test_a_name_the_csv_cannot_hold_is_listed_as_skipped_in_the_json(
    checkpoint, folder, tmp_path, capsys
):
    """--json lists an image skipped for its name beside the undecodable ones."""
    shutil.copy(folder / "a.png", folder / os.fsdecode(b"odd\xff.png"))
    (folder / "broken.png").unlink()
    argv = _caption(checkpoint, str(folder), "--csv", str(tmp_path / "c.csv"), "--json")
    code, stdout, err = run_main(argv, capsys)
    assert code == 0, err
    [skipped] = json.loads(stdout)["skipped"]
    assert skipped["image"].endswith("odd\ufffd.png") and "not UTF-8" in skipped["error"]


def test_resume_knows_the_images_a_csv_names_through_a_linked_folder(
    checkpoint, folder, tmp_path, capsys, monkeypatch
):
    """The CSV's rows name the images through a link (the first run was given the link): a
    --resume given the real folder finds them captioned."""
    (folder / "broken.png").unlink()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "linked").symlink_to(folder)
    assert run_main(_caption(checkpoint, "linked", "--csv", "c.csv"), capsys)[0] == 0
    rows = _rows(Path("c.csv"))
    assert [image for image, _ in rows] == ["linked/a.png", "linked/b.jpg", "linked/c.PNG"]
    argv = _caption(checkpoint, "photos", "--csv", "c.csv", "--resume")
    code, stdout, err = run_main(argv, capsys)
    assert code == 0 and "3 images are captioned in c.csv, 0 to go" in err and stdout == "", err
    assert _rows(Path("c.csv")) == rows


def test_a_stop_before_the_first_image_writes_no_csv_and_says_the_stop(
    checkpoint, folder, tmp_path, capsys, monkeypatch
):
    """Nothing captioned yet: the stop is said as it came, and no CSV (an empty one) is left
    behind claiming "0 of 3 images" are in it (kills: saving when results are empty)."""

    def stopped_at_once(*args, **kwargs):
        raise RunStopped("SIGTERM; run the same command again", exit_code=143)
        yield  # a generator, as caption_files is

    monkeypatch.setattr(caption, "caption_files", stopped_at_once)
    out = tmp_path / "captions.csv"
    code, _, err = run_main(
        ["--checkpoint", str(checkpoint), str(folder), "--csv", str(out)], capsys
    )
    assert code == 143
    assert err == "stopped: SIGTERM; run the same command again\n"
    assert not out.exists()


def _stopped_after_two(real, stop: BaseException):
    """`caption_files` (``real``) that raises ``stop`` once it has yielded two images."""

    def captioning(*args, **kwargs):
        for count, item in enumerate(real(*args, **kwargs), 1):
            yield item
            if count == 2:
                raise stop

    return captioning


def test_a_stopped_json_job_prints_the_captions_made_before_the_stop(
    checkpoint, folder, capsys, monkeypatch
):
    """--json printed its object at the end only: a job stopped by a signal, Ctrl-C or a named
    file that cannot be read lost every caption made (without --csv). The object of the images
    captioned before the stop is printed, with a "stopped" field saying why; the stop's own line
    and status follow as before. A reader gone (a closed pipe) is printed nothing more."""
    good = [str(folder / name) for name in ("a.png", "b.jpg", "c.PNG")]
    common = ["--checkpoint", str(checkpoint), "--json", "--batch-size", "1"]
    code, out, _ = run_main([*common, *good], capsys)
    whole = json.loads(out)
    assert code == 0 and "stopped" not in whole and len(whole["results"]) == 3
    broken = str(folder / "broken.png")
    with pytest.raises(UserError) as said:
        load_image(broken)
    code, out, err = run_main([*common, *good[:2], broken, good[2]], capsys)
    payload = json.loads(out)
    assert (code, err) == (2, f"error: {said.value}\n")
    assert payload["results"] == whole["results"][:2] and payload["skipped"] == []
    assert payload["stopped"] == f"{said.value}; the images after it were not captioned"
    real = caption.caption_files

    for stop, status, why in (
        (RunStopped("SIGTERM; run the same command again", exit_code=143), 143, "SIGTERM"),
        (KeyboardInterrupt(), 130, "interrupted"),
    ):
        monkeypatch.setattr(caption, "caption_files", _stopped_after_two(real, stop))
        code, out, err = run_main([*common, *good], capsys)
        payload = json.loads(out)
        assert code == status and payload["results"] == whole["results"][:2], err
        assert payload["stopped"] == f"{why} after 2 of 3 images"
        assert {key: payload[key] for key in ("checkpoint", "beam_size", "skipped")} == {
            key: whole[key] for key in ("checkpoint", "beam_size", "skipped")
        }
    monkeypatch.setattr(caption, "caption_files", _stopped_after_two(real, BrokenPipeError()))
    code, out, _ = run_main([*common, *good], capsys)
    assert out == ""


def test_a_stopped_json_job_whose_reader_has_gone_still_stops_as_it_was_stopped(
    checkpoint, folder, tmp_path, capsys, monkeypatch, reader_gone
):
    """`caption photos/ --json --csv out.csv | jq .` and Ctrl-C (jq ends too), or a SIGTERM once
    its reader has gone: the stop's JSON object could not be printed, and its BrokenPipeError
    took the stop's place: exit status 0, no line, and no CSV written (what --csv is for). The
    stop stays what it is (its status, its line, the CSV with the captions before it), with the
    JSON object printed where it can be, and without --csv its status too."""
    real = caption.caption_files
    good = [str(folder / name) for name in ("a.png", "b.jpg", "c.PNG")]
    broken = str(folder / "broken.png")
    whole = tmp_path / "whole.csv"
    assert run_main(_caption(checkpoint, *good, "--csv", str(whole)), capsys)[0] == 0

    out = tmp_path / "out.csv"
    for stop, status, said in (
        (RunStopped("SIGTERM; run it again", exit_code=143), 143, "stopped: SIGTERM"),
        (KeyboardInterrupt(), 130, "stopped: interrupted"),
        (None, 2, "error: "),  # a named file that cannot be read, after two
    ):
        for csv_args in (["--csv", str(out)], []):
            out.unlink(missing_ok=True)
            images = good if stop else [*good[:2], broken, good[2]]
            monkeypatch.setattr(
                caption, "caption_files", _stopped_after_two(real, stop) if stop else real
            )
            monkeypatch.setattr(sys, "stdout", reader_gone)
            argv = _caption(checkpoint, *images, "--json", "--batch-size", "1", *csv_args)
            code = run_cli(caption.main, argv)
            monkeypatch.undo()
            err = capsys.readouterr().err
            assert code == status and err.startswith(said), (stop, csv_args, err)
            if csv_args:
                assert f"{out} holds" in err and _rows(out) == _rows(whole)[:2], err
            else:
                assert not out.exists()


def test_resume_says_how_many_captions_the_csv_holds_in_all(checkpoint, folder, tmp_path, capsys):
    """After --resume the closing line counts the rows found and the new ones (kills: counting
    only the images captioned by this command)."""
    out = tmp_path / "captions.csv"
    argv = ["--checkpoint", str(checkpoint), str(folder), "--csv", str(out)]
    assert run_main(argv, capsys)[0] == 0
    whole = _rows(out)
    with out.open("w", newline="", encoding="utf-8") as stream:  # the first row only
        csv.writer(stream).writerows([["image", "caption"], whole[0]])
    code, stdout, err = run_main([*argv, "--resume"], capsys)
    assert code == 0, err
    assert "resuming: 1 images are captioned" in err and "3 to go" in err  # broken.png too
    assert len(stdout.splitlines()) == 2
    assert f"wrote 3 captions to {out}" in err
    assert _rows(out) == whole


def test_a_csv_job_whose_stdout_reader_has_gone_keeps_its_captions(
    checkpoint, folder, tmp_path, capsys, monkeypatch, reader_gone
):
    """`caption photos/ --csv captions.csv | head -1`: the first line that could not be printed
    raised BrokenPipeError, which ended the job with exit status 0, no line and no CSV (the one
    file it was run for). The CSV keeps what was captioned, as on a SIGTERM, status 141."""
    whole, out = tmp_path / "whole.csv", tmp_path / "captions.csv"
    assert run_main(_caption(checkpoint, str(folder), "--csv", str(whole)), capsys)[0] == 0
    monkeypatch.setattr(sys, "stdout", reader_gone)
    code = run_cli(caption.main, _caption(checkpoint, str(folder), "--csv", str(out)))
    err = capsys.readouterr().err
    assert code == 141, err
    assert (
        f"stopped: SIGPIPE (the standard output's reader has gone) after 1 of 4 images; {out} "
        "holds their captions: run the same command with --resume to caption the rest" in err
    )
    assert _rows(out) == _rows(whole)[:1]
    monkeypatch.undo()
    code, _, err = run_main(
        _caption(checkpoint, str(folder), "--csv", str(out), "--resume"), capsys
    )
    assert code == 0, err
    assert _rows(out) == _rows(whole)


def test_a_csv_job_interrupted_keeps_its_captions_with_ctrl_cs_status(
    checkpoint, folder, tmp_path, capsys, monkeypatch
):
    """Ctrl-C after two images: the CSV keeps them, the line says "interrupted", and the status
    is Ctrl-C's 130 (not a signal's, as SIGTERM's 143)."""
    real = caption.caption_files

    def two_then_interrupt(*args, **kwargs):
        for number, item in enumerate(real(*args, **kwargs)):
            if number == 2:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(caption, "caption_files", two_then_interrupt)
    out = tmp_path / "captions.csv"
    code = run_cli(caption.main, _caption(checkpoint, str(folder), "--csv", str(out)))
    err = capsys.readouterr().err
    assert code == 130, err
    assert (
        f"stopped: interrupted after 2 of 4 images; {out} holds their captions: run the same "
        "command with --resume to caption the rest" in err
    )
    assert len(_rows(out)) == 2
