"""Training curves (recurrent.plot): reading metrics.jsonl, the long table, the charts, the CLI."""

from __future__ import annotations

import json
import math
import re
import sys
import warnings
from pathlib import Path

import pytest
from altair.utils import _importers as importers
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image

from recurrent import plot
from recurrent.engine import parse_metrics
from recurrent.errors import run_cli


def _train(step: int, **extra) -> dict:
    line = {
        "kind": "train",
        "step": step,
        "time_s": step * 0.5,
        "timestamp": 1_795_000_000.0 + step,
        "lr": 0.002,
        "loss": 3.0 / step,
        "grad_norm": 0.9,
        "throughput": 5800.0,
        "throughput_unit": "chars/s",
    }
    return {**line, **extra}


def _eval(step: int, scores: dict, **extra) -> dict:
    line = {"kind": "eval", "step": step, "time_s": step * 0.5 + 1, "best": True}
    return {**line, "scores": scores, **extra}


def _write(folder: Path, records: list[dict], tail: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(record) + "\n" for record in records) + tail
    (folder / plot.METRICS_FILE).write_text(text, encoding="utf-8")
    return folder


# --------------------------------------------------------------------------------------------
# Reading


def test_half_written_last_line_and_foreign_lines_are_skipped(tmp_path: Path) -> None:
    records = [_train(10), _eval(20, {"val_loss": 1.5}, new_key="kept"), _train(30)]
    text = "".join(json.dumps(r) + "\n" for r in records)
    foreign = (
        "\n"
        + json.dumps({"kind": "note", "step": 1})  # another kind
        + "\n[1, 2]\n"  # not an object
        + json.dumps({"kind": "train", "step": "40"})  # a step that is not an int
        + "\n"
        + json.dumps({"kind": "train", "step": True})
        + "\n"
    )
    run = _write(tmp_path / "run", [], text + foreign + json.dumps(_train(40))[:37])
    assert plot.read_metrics(run) == records  # unknown keys stay, ignored by the plots
    assert plot.read_metrics(run / plot.METRICS_FILE) == records  # the file itself also works
    # a byte that is not UTF-8 (a disk error) is read as U+FFFD, never a traceback
    with (run / plot.METRICS_FILE).open("ab") as handle:
        handle.write(b'\n{"kind": "train", "step": 50, "note": "\xff"}\n')
    assert plot.read_metrics(run) == [*records, {"kind": "train", "step": 50, "note": "\ufffd"}]


record_strategy = st.builds(
    dict,
    kind=st.sampled_from(["train", "eval"]),
    step=st.integers(0, 10**6),
    loss=st.floats(0, 10, allow_nan=False),
    note=st.text(max_size=20),
)


@settings(max_examples=60, deadline=None)
@given(records=st.lists(record_strategy, max_size=8), last=record_strategy, cut=st.integers(1, 200))
def test_any_cut_of_a_last_line_never_reads_as_a_line(records, last, cut) -> None:
    """A run killed while writing leaves a prefix of its last line: it is never read as data."""
    line = json.dumps(last)
    text = (
        "".join(json.dumps(record) + "\n" for record in records) + line[: min(cut, len(line) - 1)]
    )
    assert parse_metrics(text) == records


def test_missing_metrics_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(plot.UserError, match="has no metrics.jsonl"):
        plot.read_metrics(tmp_path)


def test_a_metrics_path_that_is_a_folder_or_unreadable_says_which(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder named metrics.jsonl is no metrics file (not a file that cannot be read, whose
    advice would be its permissions); a file that cannot be read says to check them (kills:
    `exists` for `is_file`, the advice changed)."""
    (tmp_path / "run" / plot.METRICS_FILE).mkdir(parents=True)
    with pytest.raises(plot.UserError, match=r"has no metrics\.jsonl; pass a run folder"):
        plot.read_metrics(tmp_path / "run")
    run = _write(tmp_path / "other", [_train(1)])

    def refused(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", refused)
    with pytest.raises(plot.UserError) as raised:
        plot.read_metrics(run)
    assert str(raised.value) == (
        f"cannot read {run / plot.METRICS_FILE} (Permission denied); check its permissions"
    )


# --------------------------------------------------------------------------------------------
# The long table and the charts


def test_frame_puts_each_value_in_its_panel() -> None:
    runs = {
        "lm": [
            _train(10),
            _eval(10, {"val_loss": 1.5}),
            _train(20, lr=None, grad_norm=math.nan),
            _train(30, loss=math.inf, lr=-math.inf, grad_norm=math.inf),
        ],  # fmt: skip
        "cap": [
            _train(5, throughput=160.0, throughput_unit="pairs/s", loss=True),
            {"kind": "eval", "step": 5, "scores": {"BLEU-4": 41.2, "CIDEr-D": 95.0, "x": "y"}},
        ],
        "scst": [_train(10, loss=0.25, scst_reward=1.5, throughput=None)],
    }
    frame = plot.metrics_frame(runs)
    rows = {(row.run, row.panel, row.series, row.step): row.value for row in frame.itertuples()}
    assert rows == {
        ("lm", "loss", "train loss", 10): 0.3,
        ("lm", "loss", "train loss", 20): 0.15,
        ("lm", "loss", "val loss", 10): 1.5,
        ("lm", "learning rate", "learning rate", 10): 0.002,
        ("lm", "throughput", "throughput (chars/s)", 10): 5800.0,
        ("lm", "throughput", "throughput (chars/s)", 20): 5800.0,
        ("lm", "throughput", "throughput (chars/s)", 30): 5800.0,  # its infinities are dropped
        ("lm", "gradient norm", "gradient norm", 10): 0.9,
        ("cap", "learning rate", "learning rate", 5): 0.002,
        ("cap", "throughput", "throughput (pairs/s)", 5): 160.0,
        ("cap", "gradient norm", "gradient norm", 5): 0.9,
        ("cap", "scores", "val BLEU-4", 5): 41.2,
        ("cap", "scores", "val CIDEr-D", 5): 95.0,
        # self-critical training's loss is no cross-entropy: a series of its own
        ("scst", "loss", "self-critical loss (-advantage x log p)", 10): 0.25,
        ("scst", "learning rate", "learning rate", 10): 0.002,  # only the loss is renamed
        ("scst", "gradient norm", "gradient norm", 10): 0.9,
    }  # no lr/grad_norm at step 20 (None, NaN), no train loss for "cap" (a bool), no "x"
    no_time = frame[(frame.run == "cap") & (frame.kind == "eval")]
    assert no_time["time_s"].isna().all() and frame["time_s"].notna().sum() == len(frame) - 2


def _chart_rows(chart) -> dict[str, int]:
    """Rows of data per layer of a layered chart, after its kind filter."""
    spec = chart.to_dict()
    [values] = spec["datasets"].values()
    counts = {}
    for layer in spec["layer"]:
        [kind] = re.findall(r"datum.kind === '(\w+)'", layer["transform"][0]["filter"])
        counts[kind] = sum(value["kind"] == kind for value in values)
    return counts


def test_charts_follow_the_panels_and_the_x_axis() -> None:
    lm = [_train(step) for step in (10, 20, 30)] + [_eval(30, {"val_loss": 1.2})]
    derived = [{"kind": "eval", "step": 100, "scores": {"val_loss": 2.0}}]  # no wall time
    frame = plot.metrics_frame({"lm": lm, "derived": derived})
    charts = plot.curve_charts(frame, "step")
    assert list(charts) == ["loss", "learning rate", "throughput", "gradient norm"]
    assert _chart_rows(charts["loss"]) == {"train": 3, "eval": 2}
    loss = charts["loss"].to_dict()
    assert loss["layer"][0]["encoding"]["strokeDash"]["field"] == "series"  # two runs
    assert loss["layer"][0]["encoding"]["x"]["field"] == "step"
    by_time = plot.curve_charts(frame, "time")
    assert _chart_rows(by_time["loss"]) == {"train": 3, "eval": 1}  # the derived run has no time
    assert by_time["loss"].to_dict()["layer"][0]["encoding"]["x"]["field"] == "time_s"
    one_run = plot.curve_charts(plot.metrics_frame({"lm": lm}), "step")["loss"].to_dict()
    assert "strokeDash" not in one_run["layer"][0]["encoding"]
    assert one_run["layer"][0]["encoding"]["color"]["field"] == "series"
    assert plot.curve_charts(plot.metrics_frame({"derived": derived}), "time") == {}


def test_each_chart_draws_what_its_docstring_says() -> None:
    """Train lines without points and evaluations with them; whole steps on a step axis, plain
    numbers on a time axis; drag and wheel zoom along x only; a title per panel unless the caller
    labels them; 220 px high (kills: the step axis's format on wall time, the points dropped, a
    zoom along y too, the titles turned round, another default height)."""
    lines = [_train(step) for step in (10, 20, 30)] + [_eval(30, {"val_loss": 1.2})]
    frame = plot.metrics_frame({"lm": lines})
    for x, field in (("step", "step"), ("time", "time_s")):
        charts = plot.curve_charts(frame, x)
        assert [chart.to_dict()["title"] for chart in charts.values()] == list(charts)
        train, evals = charts["loss"].to_dict()["layer"]
        assert "point" not in train["mark"] and evals["mark"]["point"] == {"size": 30}
        axis = train["encoding"]["x"]["axis"]
        assert axis == ({"format": ",d", "tickMinStep": 1} if x == "step" else {}), x
        for panel, chart in charts.items():
            spec = chart.to_dict()
            [zoom] = spec["params"]
            assert zoom["bind"] == "scales" and zoom["select"]["encodings"] == ["x"], panel
            assert spec["height"] == 220 and spec["width"] == "container"
            assert spec["layer"][0]["encoding"]["x"]["field"] == field
    untitled = plot.curve_charts(frame, "step", titles=False)
    assert all("title" not in chart.to_dict() for chart in untitled.values())


def test_the_stacked_chart_keeps_each_panels_legend_and_every_point_asked_for() -> None:
    """`curves_chart` (the command line's chart): each panel's colours its own (its series are
    other series), ``buckets`` passed on (None: every point), and a run with nothing to draw
    against wall time says so (kills: colours shared, ``buckets`` not passed on, the message's
    axis turned round)."""
    runs = {"long": [_train(step, loss=math.sin(step)) for step in range(1, 5001)]}
    chart = plot.curves_chart(runs, "step")
    spec = chart.to_dict()
    assert spec["resolve"] == {"scale": {"color": "independent", "strokeDash": "independent"}}
    assert max(len(data) for data in spec["datasets"].values()) <= plot.MAX_POINTS
    every = plot.curves_chart(runs, "step", buckets=None).to_dict()
    assert max(len(data) for data in every["datasets"].values()) == 5000
    derived = {"derived": [{"kind": "eval", "step": 100, "scores": {"val_loss": 2.0}}]}
    with pytest.raises(plot.UserError) as raised:
        plot.curves_chart(derived, "time")
    assert str(raised.value) == (
        "no metrics to plot with a wall time in derived; a run writes them as it trains"
    )
    plot.curves_chart(derived, "step")  # its step is enough


def _thin_reference(frame, x: str, buckets: int) -> list[int]:
    """The rows `plot.thin` keeps, written out plainly: a series of more than 4 x ``buckets`` rows
    keeps, in each of ``buckets`` equal ranges of ``x``, its first, last, lowest and highest row
    (the first of equals); a shorter series keeps every row."""
    kept = []
    for _, series in frame.groupby(plot.SERIES_KEYS, sort=False):
        rows = list(series.itertuples())
        if len(rows) <= 4 * buckets:
            kept += [row.Index for row in rows]
            continue
        xs = [getattr(row, x) for row in rows]
        low, span = min(xs), max(xs) - min(xs)
        cells: dict[int, list] = {}
        for row, value in zip(rows, xs, strict=True):
            cell = min(int((value - low) / (span if span > 0 else 1.0) * buckets), buckets - 1)
            cells.setdefault(cell, []).append(row)
        for cell in cells.values():
            for key in (lambda r: getattr(r, x), lambda r: r.value):
                kept += [min(cell, key=key).Index, max(cell, key=key).Index]
    return sorted(set(kept))


@settings(max_examples=100, deadline=None)
@example(  # one wall time for all six rows: a span of 0 is one range, not 0 / 0
    runs=[[(1, 0.5), (1, 3.0), (1, -2.0), (1, 1.0), (1, 0.7), (1, 9.0)]], buckets=1, x="time"
)
@example(  # lowest and highest in the middle of a range, never its first or last row
    runs=[[(1, 0.5), (2, 3.0), (1, -2.0), (3, 1.0), (1, 0.7), (2, 9.0), (1, -4.0), (1, 0.2)]] * 2,
    buckets=1,
    x="step",
)
@given(
    runs=st.lists(
        st.lists(
            st.tuples(st.integers(1, 40), st.floats(-1e6, 1e6, allow_nan=False)),
            max_size=60,
        ),
        min_size=1,
        max_size=3,
    ),
    buckets=st.integers(1, 6),
    x=st.sampled_from(["step", "time"]),
)
def test_thinning_keeps_the_first_last_lowest_and_highest_row_of_each_range(
    runs, buckets, x
) -> None:
    """`plot.thin` against `_thin_reference`, on runs whose steps advance by random strides (the
    x ranges then hold uneven counts) with random losses; wall time repeats values."""
    records = {}
    for number, lines in enumerate(runs):
        step, records[f"run{number}"] = 0, []
        for stride, loss in lines:
            step += stride
            records[f"run{number}"].append(_train(step, loss=loss, time_s=float(step // 7)))
    field = plot.X_AXES[x][0]
    frame = plot.metrics_frame(records).dropna(subset=[field])
    thinned = plot.thin(frame, field, buckets)
    assert list(thinned.index) == _thin_reference(frame, field, buckets)
    for _, series in thinned.groupby(plot.SERIES_KEYS):
        assert len(series) <= max(4 * buckets, len(frame))


def test_a_long_run_is_drawn_from_at_most_4000_points_a_series(tmp_path: Path) -> None:
    """A day of a fast run's lines (10,000 here): each series reaches the chart thinned to
    `plot.MAX_POINTS` points or fewer, with its first and last step and a one-line spike."""
    lines = [_train(step, loss=1.0 + 1e-5 * (step % 997)) for step in range(1, 10_001)]
    lines[6_543]["loss"] = 50.0
    frame = plot.metrics_frame({"long": lines})
    charts = plot.curve_charts(frame, "step")
    assert len(frame[frame["series"] == "train loss"]) == 10_000
    for panel, chart in charts.items():
        [values] = chart.to_dict()["datasets"].values()
        steps = [value["step"] for value in values]
        assert len(values) <= plot.MAX_POINTS and {1, 10_000} <= set(steps), panel
    [loss] = charts["loss"].to_dict()["datasets"].values()
    assert max(value["value"] for value in loss) == 50.0
    run = _write(tmp_path / "long", lines)  # the command line draws the same points
    assert run_cli(plot.main, [str(run), "--out", str(tmp_path / "curves.json")]) == 0
    spec = json.loads((tmp_path / "curves.json").read_text())
    assert max(len(data) for data in spec["datasets"].values()) <= plot.MAX_POINTS


def _evenly(n: int, first: float, last: float) -> list[float]:
    return [first * (1 - i / (n - 1)) + last * (i / (n - 1)) for i in range(n)]


@pytest.mark.parametrize(
    ("field", "xs"),
    [  # int64 steps across their whole range wrapped round in int64 arithmetic: 10 points kept
        ("step", [-(2**63 - 1) + (i * (2**64 - 2)) // 4999 for i in range(5000)]),
        # times from -1e308 to 1e308: a span of inf, and a traceback (IntCastingNaNError)
        ("time_s", _evenly(5000, -1e308, 1e308)),
    ],
)
def test_a_series_whose_x_spans_the_extremes_is_thinned_as_any_other(field: str, xs: list) -> None:
    """A series spread evenly over the widest x range keeps the rows it keeps spread over 0 to
    4999 (the same ranges), whatever the arithmetic of its ends."""

    def thinned(positions: list) -> list[int]:
        lines = [
            {**_train(i + 1, loss=math.sin(i)), field: position}
            for i, position in enumerate(positions)
        ]
        frame = plot.metrics_frame({"run": lines})
        frame = frame[frame["series"] == "train loss"].reset_index(drop=True)
        return list(plot.thin(frame, field).index)

    kept = thinned(xs)
    assert kept == thinned(list(range(5000)))
    assert len(kept) > 2 * plot.BUCKETS


def test_a_number_no_float_holds_is_skipped_like_a_nan(tmp_path: Path) -> None:
    """JSON allows an int of 400 digits; as a loss or a time it is no value to draw (float()
    raised OverflowError: a traceback from the command line, a run dropped by the app)."""
    huge = int("1" + "0" * 400)
    lines = [_train(1), _train(2, loss=huge, time_s=huge), _train(3)]
    assert plot.finite_number(huge) is None and plot.finite_number(2**1000) == 2.0**1000
    frame = plot.metrics_frame({"run": lines})
    assert list(frame[frame["series"] == "train loss"]["step"]) == [1, 3]
    assert math.isnan(frame[frame["step"] == 2]["time_s"].iloc[0])
    run = _write(tmp_path / "run", lines)
    assert run_cli(plot.main, [str(run), "--out", str(tmp_path / "curves.json")]) == 0


def test_metrics_lines_split_at_newlines_only_and_a_byte_order_mark_is_skipped() -> None:
    """A file another tool wrote: a UTF-8 byte-order mark before the first line made it no JSON
    (dropped), and U+2028 / U+0085 inside a string, which JSON allows, cut a line in two (both
    halves dropped); CRLF line ends read as before."""
    first, second = _train(1), _train(2, note="a\u2028b\x85c")
    text = "\ufeff" + json.dumps(first) + "\r\n" + json.dumps(second, ensure_ascii=False) + "\n"
    assert parse_metrics(text) == [first, second]


# --------------------------------------------------------------------------------------------
# The command line


def test_cli_writes_a_png_of_every_panel(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    first = _write(tmp_path / "a" / "run", [_train(10), _train(20), _eval(20, {"val_loss": 1.0})])
    second = _write(tmp_path / "b" / "run", [_train(10), _eval(10, {"val_loss": 1.4})], '{"ki')
    out = tmp_path / "out" / "curves.png"
    assert run_cli(plot.main, [str(first), str(second), "--out", str(out), "--width", "300"]) == 0
    assert f"wrote {out} (2 runs, 5 metrics lines)" in capsys.readouterr().out
    with Image.open(out) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert width >= 600 and height > 4 * 220 * 2  # 4 panels of 220 px at scale 2, stacked

    pdf = tmp_path / "curves.pdf"  # a vector file: no scale, and no library warning about one
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # vl-convert warned "The scale argument is no longer
        assert run_cli(plot.main, [str(first), "--out", str(pdf)]) == 0  # supported for PDF"
    assert pdf.read_bytes().startswith(b"%PDF") and capsys.readouterr().err == ""

    spec = tmp_path / "curves.json"
    assert run_cli(plot.main, [str(first), str(second), "--out", str(spec), "--x", "time"]) == 0
    chart = json.loads(spec.read_text())
    assert len(chart["vconcat"]) == 4
    runs = {value["run"] for data in chart["datasets"].values() for value in data}
    assert runs == {str(tmp_path / "a" / "run"), str(tmp_path / "b" / "run")}  # names clashed

    page = tmp_path / "curves.html"  # opens offline: the chart library is in the file
    assert run_cli(plot.main, [str(first), "--out", str(page)]) == 0
    assert 'src="http' not in page.read_text() and "vega" in page.read_text()


def test_a_full_disk_leaves_the_old_chart_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture, full_disk
) -> None:
    """The chart is written atomically: altair writing straight into --out left it cut short
    after a traceback."""
    run = _write(tmp_path / "run", [_train(10), _eval(20, {"val_loss": 1.0})])
    out = tmp_path / "curves.json"
    out.write_text("the old chart")
    full_disk(1000)
    assert run_cli(plot.main, [str(run), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"error: the disk is full (writing {out}): No space left on device; free space on it and "
        "run again\n"
    )
    assert out.read_text() == "the old chart"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.json", "run"]


def test_cli_names_a_run_whose_folder_name_is_not_utf8(tmp_path: Path) -> None:
    """A folder name with a byte that is not UTF-8 ended in a UnicodeEncodeError traceback (the
    chart's data cannot hold it): the run is drawn, its name showing U+FFFD for the byte."""
    run = _write(tmp_path / b"run\xff".decode("utf-8", "surrogateescape"), [_train(1), _train(2)])
    out = tmp_path / "curves.json"
    assert run_cli(plot.main, [str(run), "--out", str(out)]) == 0
    runs = {
        value["run"] for data in json.loads(out.read_text())["datasets"].values() for value in data
    }
    assert runs == {"run\ufffd"}


def test_cli_draws_one_file_given_under_two_spellings_once(tmp_path: Path, monkeypatch) -> None:
    """A relative and an absolute path, or a link, to one run are that run once (they were two
    runs of the same points); two runs of one folder name are still told apart."""
    run = _write(tmp_path / "a" / "run", [_train(1), _train(2)])
    other = _write(tmp_path / "b" / "run", [_train(1, loss=9.0)])
    (tmp_path / "link").symlink_to(run)
    monkeypatch.chdir(tmp_path)
    names = plot.run_names(["a/run", str(run), "link", "a/run/metrics.jsonl", str(other)])
    assert names == ["a/run", "a/run", "a/run", "a/run", str(other)]
    assert plot.run_names(["a/run", "link"]) == ["run", "run"]
    out = tmp_path / "curves.json"
    assert run_cli(plot.main, ["a/run", str(run), "link", "--out", str(out)]) == 0
    runs = {
        value["run"] for data in json.loads(out.read_text())["datasets"].values() for value in data
    }
    assert runs == {"run"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{missing}", "--out", "x.png"], "has no metrics.jsonl"),
        (
            ["{run}", "--out", "x.gif"],
            "unknown format '.gif'; use one of .png, .svg, .pdf, .html, .json",
        ),
        (["{empty}", "--out", "x.json"], "no metrics to plot"),
        (["{run}", "--out", "x.png", "--width", "3"], "--width must be 50 to 4000 pixels, got 3"),
        (["{run}", "--out", "x.png", "--width", "100000"], "--width must be 50 to 4000 pixels"),
    ],
)
def test_cli_user_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], message: str
) -> None:
    paths = {
        "missing": tmp_path / "missing",
        "run": _write(tmp_path / "run", [_train(1)]),
        "empty": _write(tmp_path / "empty", [], '{"kind": "tr'),
    }
    argv = [
        arg.format(**paths)
        if arg.startswith("{")
        else str(tmp_path / arg)
        if arg.startswith("x.")
        else arg
        for arg in args
    ]
    assert run_cli(plot.main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


@pytest.mark.parametrize("vl_convert", ["missing", "0.14.0"])
def test_a_missing_or_too_old_vl_convert_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, vl_convert: str
) -> None:
    """Altair raised a ValueError for a missing vl-convert-python, or a RuntimeError for one older
    than its minimum (1.9.0 for Altair 6.3), as a traceback; the old chart stays."""
    if vl_convert == "missing":
        monkeypatch.setitem(sys.modules, "vl_convert", None)  # what an import finds when missing
        found = "not installed"
    else:
        monkeypatch.setattr(importers, "importlib_version", lambda name: vl_convert)
        minimum = importers.VERSIONS["vl-convert-python"]
        found = f"The vl-convert-python package must be version {minimum}"
    run = _write(tmp_path / "run", [_train(10), _eval(20, {"val_loss": 1.0})])
    out = tmp_path / "curves.png"
    out.write_bytes(b"the old chart")
    assert run_cli(plot.main, [str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: writing .png needs vl-convert-python ({found}")
    assert (
        err.endswith(
            "pip install -U -e '.[plot]' (or write --out curves.json, the chart's Vega-Lite spec)\n"
        )
        and err.count("\n") == 1
    )
    assert out.read_bytes() == b"the old chart"


def _spec(tmp_path: Path, argv: list[str]) -> dict:
    out = tmp_path / "curves.json"
    assert run_cli(plot.main, [*argv, "--out", str(out)]) == 0
    return json.loads(out.read_text())


def _run_names_in(spec: dict) -> set[str]:
    return {value["run"] for data in spec["datasets"].values() for value in data}


def test_cli_defaults_and_the_line_of_one_run(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Without --x and --width: against steps, 560 px a panel; the format's suffix in any case;
    one run is "1 run" (kills: the defaults changed, the suffix's case kept, "1 runs")."""
    run = _write(tmp_path / "run", [_train(1), _train(2), _eval(2, {"val_loss": 1.0})])
    out = tmp_path / "curves.JSON"
    assert run_cli(plot.main, [str(run), "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"wrote {out} (1 run, 3 metrics lines)\n"
    spec = json.loads(out.read_text())
    assert [panel["width"] for panel in spec["vconcat"]] == [560] * 4
    assert {panel["layer"][0]["encoding"]["x"]["field"] for panel in spec["vconcat"]} == {"step"}


@pytest.mark.parametrize("width", [50, plot.MAX_WIDTH])
def test_cli_takes_the_widths_at_its_bounds(tmp_path: Path, width: int) -> None:
    run = _write(tmp_path / "run", [_train(1), _train(2), _eval(2, {"val_loss": 1.0})])
    spec = _spec(tmp_path, [str(run), "--width", str(width)])
    assert [panel["width"] for panel in spec["vconcat"]] == [width] * 4


def test_a_run_given_as_dot_is_named_after_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -m recurrent.plot .` inside a run folder (or its metrics.jsonl there): the folder's
    name, not "." or an empty name."""
    run = _write(tmp_path / "lstm_512", [_train(1), _train(2)])
    monkeypatch.chdir(run)
    assert plot.run_names(["."]) == ["lstm_512"]
    assert plot.run_names([plot.METRICS_FILE]) == ["lstm_512"]
    assert _run_names_in(_spec(tmp_path, ["."])) == {"lstm_512"}


def test_a_renamed_jsonl_file_is_read_as_the_metrics_of_its_folder(tmp_path: Path) -> None:
    """A metrics file kept under another name (say before a resume) is read as given, and named
    after its folder like a run folder is."""
    records = [_train(1), _train(2), _eval(2, {"val_loss": 1.0})]
    kept = _write(tmp_path / "gru", records) / plot.METRICS_FILE
    renamed = kept.rename(tmp_path / "gru" / "metrics-before-resume.jsonl")
    other = _write(tmp_path / "lstm", [_train(1)])
    assert plot.metrics_path(renamed) == renamed
    assert plot.read_metrics(renamed) == parse_metrics(renamed.read_text())
    assert plot.run_names([renamed, other]) == ["gru", "lstm"]
    spec = _spec(tmp_path, [str(renamed), str(other)])
    assert _run_names_in(spec) == {"gru", "lstm"}
    # two files of one folder are two runs, named by their files (the folder's path was one name,
    # and the second run replaced the first)
    kept = _write(tmp_path / "gru", [_train(1), _train(2)]) / plot.METRICS_FILE
    assert plot.run_names([renamed, kept, other]) == [str(renamed), str(kept), "lstm"]
    spec = _spec(tmp_path, [str(renamed), str(kept)])
    assert _run_names_in(spec) == {str(renamed), str(kept)}


def test_each_series_is_thinned_over_its_own_x_range() -> None:
    """Two long series of one run over different steps (a throughput logged from step 5,001
    only): each is cut into BUCKETS ranges of its own steps, exactly as when thinned alone."""
    lines = [
        _train(step, loss=math.sin(step), throughput=math.cos(step) if step > 5000 else None)
        for step in range(1, 10_001)
    ]
    frame = plot.metrics_frame({"run": lines})
    alone = set()
    for series in frame["series"].unique():
        alone |= set(plot.thin(frame[frame["series"] == series], "step").index)
    assert set(plot.thin(frame, "step").index) == alone


def test_a_run_given_under_two_spellings_is_named_after_the_first(
    tmp_path: Path, monkeypatch
) -> None:
    """One run, two spellings: both take the name of the first one given."""
    run = _write(tmp_path / "a" / "run", [_train(1)])
    other = _write(tmp_path / "b" / "run", [_train(1)])
    monkeypatch.chdir(tmp_path)
    assert plot.run_names(["a/run", str(run), str(other)]) == ["a/run", "a/run", str(other)]


def test_save_chart_lets_an_error_that_is_not_vl_converts_through(tmp_path, monkeypatch):
    """Only Altair's "needs vl-convert" errors become the install hint (kills: any ValueError
    taken for a missing vl-convert-python)."""
    chart = plot.curves_chart({"r": [{"kind": "train", "step": 1, "loss": 1.0}]})

    def broken(*args, **kwargs):
        raise ValueError("a bug in the chart")

    monkeypatch.setattr(type(chart), "save", broken)
    with pytest.raises(ValueError, match="a bug in the chart"):
        plot.save_chart(chart, tmp_path / "c.png")
