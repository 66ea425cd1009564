"""Training curves of one or more runs, from their ``metrics.jsonl``, as Altair charts.

    python -m recurrent.plot runs/shakespeare --out curves.png
    python -m recurrent.plot runs/lstm runs/gru --x time --out compare.svg

Both trainers append one JSON object per line to ``RUN_DIR/metrics.jsonl``: ``"kind": "train"``
lines every ``train.log_every`` steps (loss, lr, grad_norm, throughput and its unit, time_s) and
``"kind": "eval"`` lines at every evaluation (a ``scores`` dict: ``val_loss`` for a char LM, BLEU-n
and CIDEr-D for a captioner). `read_metrics` skips what it cannot use (a half-written last line of
a run killed mid-write, a line of another kind, unknown keys), so a run can be read while it is
still training.

`metrics_frame` turns the lines of several runs into one long table (run, kind, step, time_s,
panel, series, value); `curve_charts` draws one chart per panel (loss, scores, learning rate,
throughput, gradient norm) against steps or wall time, runs overlaid, a long series drawn from
the at most 4,000 of its points that draw the same line (`thin`); the Streamlit app's Training
curves page shows those charts and this module's command line writes them stacked to a PNG, SVG,
PDF (through vl-convert-python, the ``plot`` extra) or a self-contained HTML file.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd

from recurrent.checkpoint import shown_name
from recurrent.engine import parse_metrics
from recurrent.errors import ArgumentParser, UserError, first_line, run_cli, shown
from recurrent.files import atomic_write

METRICS_FILE = "metrics.jsonl"
# Panels in the order they are shown; each train key below goes to one of them, eval scores whose
# name ends in "loss" go to "loss" and the others (BLEU-n, CIDEr-D) to "scores".
PANELS = ("loss", "scores", "learning rate", "throughput", "gradient norm")
TRAIN_SERIES = {  # train-line key -> (panel, series)
    "loss": ("loss", "train loss"),
    "lr": ("learning rate", "learning rate"),
    "throughput": ("throughput", "throughput"),
    "grad_norm": ("gradient norm", "gradient norm"),
}
X_AXES = {"step": ("step", "step"), "time": ("time_s", "wall time (s)")}
PANEL_TITLES = {
    "loss": "loss (nats per token)",
    "scores": "validation scores (0-100)",
    "learning rate": "learning rate",
    "throughput": "throughput",
    "gradient norm": "gradient norm",
}
FORMATS = ("png", "svg", "pdf", "html", "json")
MAX_WIDTH = 4000  # pixels per panel; PNGs are drawn at twice that: wider is no picture to open
STEP_AXIS = alt.Axis(format=",d", tickMinStep=1)  # whole steps: 1,600 (not 1.6e+3, nor 2.5)
COLUMNS = ["run", "kind", "step", "time_s", "panel", "series", "value", "unit"]
SERIES_KEYS = ["run", "kind", "panel", "series"]  # the rows of one line drawn in a chart
# A series of more points than MAX_POINTS is drawn from its first, last, lowest and highest point in
# each of BUCKETS equal ranges of the x axis (`thin`): at most 4 x BUCKETS points.
BUCKETS = 1000
MAX_POINTS = 4 * BUCKETS


def finite_number(value: Any) -> float | None:
    """A finite int or float (not a bool), as float; None otherwise (an int of 400 digits too,
    which JSON allows and no float holds)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def metrics_path(run: str | os.PathLike[str]) -> Path:
    """``RUN_DIR/metrics.jsonl`` for a run folder, or the path itself for a .jsonl file."""
    path = Path(run)
    return path if path.suffix == ".jsonl" else path / METRICS_FILE


def read_metrics(run: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The usable lines (`parse_metrics`) of a run folder's metrics.jsonl (or of a .jsonl file)."""
    path = metrics_path(run)
    if not path.is_file():
        raise UserError(
            f"{run} has no {METRICS_FILE}; pass a run folder written by python -m char_lm.train "
            "or python -m captioner.train (or its metrics.jsonl)"
        )
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as err:
        raise UserError(
            f"cannot read {path} ({err.strerror or err}); check its permissions"
        ) from None
    return parse_metrics(text)


def metrics_frame(runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> pd.DataFrame:
    """One row per plotted value: run, kind, step, time_s (NaN when absent), panel, series, value,
    unit (the throughput's unit, else ""). ``runs`` maps a run's name to its metrics lines."""
    rows = []
    for run, records in runs.items():
        for record in records:
            time_s = finite_number(record.get("time_s"))
            base = {
                "run": run,
                "kind": record["kind"],
                "step": record["step"],
                "time_s": math.nan if time_s is None else time_s,
            }
            if record["kind"] == "train":
                for key, (panel, series) in TRAIN_SERIES.items():
                    value = finite_number(record.get(key))
                    if value is None:
                        continue
                    unit = str(record.get("throughput_unit") or "") if key == "throughput" else ""
                    label = f"{series} ({unit})" if unit else series
                    if key == "loss" and "scst_reward" in record:  # not a cross-entropy in nats
                        label = "self-critical loss (-advantage x log p)"
                    rows.append(
                        {**base, "panel": panel, "series": label, "value": value, "unit": unit}
                    )
            else:
                scores = record.get("scores")
                for name, raw in scores.items() if isinstance(scores, dict) else ():
                    value = finite_number(raw)
                    if value is None:
                        continue
                    name = str(name)
                    if name.endswith("loss"):
                        panel, series = "loss", name.replace("_", " ")
                    else:
                        panel, series = "scores", f"val {name}"
                    rows.append(
                        {**base, "panel": panel, "series": series, "value": value, "unit": ""}
                    )
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.sort_values(["run", "panel", "series", "step"], kind="stable").reset_index(
        drop=True
    )


def thin(frame: pd.DataFrame, x: str, buckets: int = BUCKETS) -> pd.DataFrame:
    """``frame`` with each series (`SERIES_KEYS`) of more than 4 x ``buckets`` rows cut down to the
    rows that draw the same line: in each of ``buckets`` equal ranges of column ``x``, the first,
    last, lowest and highest point (M4: Jugel et al. 2014, *M4: A Visualization-Oriented Time
    Series Data Aggregation*). A line of 100,000 points draws the same picture from at most 4,000,
    every spike kept, and the browser is spared the rest. Rows keep their order; series of fewer
    rows are left whole. The frame's index must be unique, as `metrics_frame` makes it."""
    sizes = frame.groupby(SERIES_KEYS, sort=False)[x].transform("size")
    long = frame[sizes > 4 * buckets]
    if long.empty:
        return frame
    # in floats (exact for steps below 2**53): int64 steps spanning more than 2**63 wrapped round
    values = long[x].astype(float)
    series = values.groupby([long[key] for key in SERIES_KEYS], sort=False)
    low, high = series.transform("min"), series.transform("max")
    # halved where the span overflows (times from -1e308 to 1e308), so that it stays finite
    half = 1.0 - 0.5 * ((high - low) == math.inf)
    span = high * half - low * half
    position = (values * half - low * half) / span.where(span > 0, 1.0)
    bucket = (position * buckets).astype(int).clip(upper=buckets - 1)
    cells = long.groupby([*(long[key] for key in SERIES_KEYS), bucket], sort=False)
    kept = pd.concat(
        [cells[x].idxmin(), cells[x].idxmax(), cells["value"].idxmin(), cells["value"].idxmax()]
    )
    return frame[(sizes <= 4 * buckets) | frame.index.isin(kept)]


def curve_charts(
    frame: pd.DataFrame,
    x: str = "step",
    *,
    width: int | str = "container",
    height: int = 220,
    titles: bool = True,
    buckets: int | None = BUCKETS,
) -> dict[str, alt.Chart]:
    """One Altair chart per panel that has data, in `PANELS` order, against ``x`` ("step" or
    "time"). In a panel with several runs, runs are told apart by colour and series by dash
    pattern; with one run, series by colour. Evaluations are drawn with points, train lines
    without. ``width="container"`` fits the page's width (the app); without ``titles`` the caller
    labels the charts. A series of more than 4 x ``buckets`` points is drawn from the points
    `thin` keeps (None: every point)."""
    if x not in X_AXES:
        raise UserError(f"x must be one of {sorted(X_AXES)}, got {shown(x)}")
    field, title = X_AXES[x]
    frame = frame.dropna(subset=[field])
    if buckets is not None:  # None: rows thinned already (the app), or every row (a benchmark)
        frame = thin(frame, field, buckets)
    charts: dict[str, alt.Chart] = {}
    for panel in PANELS:
        data = frame[frame["panel"] == panel]
        if data.empty:
            continue
        several_runs = data["run"].nunique() > 1
        encoding = {
            "x": alt.X(f"{field}:Q", title=title, axis=STEP_AXIS if x == "step" else alt.Axis()),
            "y": alt.Y(
                "value:Q", title=PANEL_TITLES[panel], scale=alt.Scale(zero=False, padding=8)
            ),
            "color": alt.Color(
                "run:N" if several_runs else "series:N",
                title=None,
                legend=alt.Legend(orient="bottom", direction="vertical"),
            ),
            "tooltip": [
                alt.Tooltip("run:N"),
                alt.Tooltip("series:N"),
                alt.Tooltip("step:Q"),
                alt.Tooltip("time_s:Q", title="wall time (s)", format=".1f"),
                alt.Tooltip("value:Q", format=".4g"),
            ],
        }
        if several_runs:
            encoding["strokeDash"] = alt.StrokeDash(
                "series:N",
                title=None,
                legend=alt.Legend(
                    orient="bottom",
                    direction="vertical",
                    symbolType="stroke",
                    symbolStrokeColor="#444",
                    symbolFillColor="#444",  # without it the eval layer's points hide the dashes
                    symbolStrokeWidth=2,
                ),
            )
        base = alt.Chart(data).encode(alt.Detail("series:N"), **encoding)
        train = base.transform_filter(alt.datum.kind == "train").mark_line(strokeWidth=1.5)
        evals = base.transform_filter(alt.datum.kind == "eval").mark_line(
            point=alt.OverlayMarkDef(size=30), strokeWidth=1.5
        )
        kinds = set(data["kind"])
        layers = [layer for kind, layer in (("train", train), ("eval", evals)) if kind in kinds]
        zoom = alt.selection_interval(  # drag to pan, wheel to zoom along x; double-click resets
            bind="scales", encodings=["x"], name=f"zoom_{panel.replace(' ', '_')}"
        )
        chart = alt.layer(*layers).add_params(zoom).properties(width=width, height=height)
        if titles:
            chart = chart.properties(title=panel)
        if width == "container":  # fit the width only: ``height`` stays the plot's own
            chart = chart.properties(autosize=alt.AutoSizeParams(type="fit-x", contains="padding"))
        charts[panel] = chart
    return charts


def curves_chart(
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    x: str = "step",
    width: int = 560,
    buckets: int | None = BUCKETS,
) -> alt.VConcatChart:
    """All panels of ``runs`` stacked in one chart (what the command line writes)."""
    charts = curve_charts(metrics_frame(runs), x, width=width, buckets=buckets)
    if not charts:
        names = ", ".join(runs)
        axis = " with a wall time" if x == "time" else ""
        raise UserError(f"no metrics to plot{axis} in {names}; a run writes them as it trains")
    return alt.vconcat(*charts.values()).resolve_scale(
        color="independent", strokeDash="independent"
    )


def save_chart(chart: alt.TopLevelMixin, out: str | os.PathLike[str], scale: float = 2.0) -> Path:
    """Write ``chart`` to ``out`` atomically, its format from the suffix: PNG, SVG and PDF through
    vl-convert-python; HTML with the Vega libraries inlined, so it opens offline; JSON (the
    spec)."""
    out = Path(out)
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise UserError(
            f"--out {out}: unknown format {out.suffix!r}; use one of .{', .'.join(FORMATS)}"
        )
    # vl-convert scales PNG and SVG; a PDF is vector at its own size (it warns at scale_factor)
    options: dict[str, Any] = {"scale_factor": scale} if fmt in ("png", "svg") else {}
    if fmt == "html":
        options["inline"] = True
    # drawn in memory, then written whole or not at all (a full disk leaves no truncated file)
    drawn: io.BytesIO | io.StringIO = io.BytesIO() if fmt in ("png", "pdf") else io.StringIO()
    try:
        chart.save(drawn, format=fmt, **options)
    # Altair renders PNG/SVG/PDF and inline HTML with vl-convert-python: a ValueError (or an
    # ImportError) when it is missing, a RuntimeError when it is older than this Altair's minimum
    # ("The vl-convert-python package must be version 1.9.0 or greater. Found version ...")
    except (ValueError, ImportError, RuntimeError) as err:
        if "vl-convert" not in str(err):
            raise
        found = first_line(err) if isinstance(err, RuntimeError) else "not installed"
        raise UserError(
            f"writing .{fmt} needs vl-convert-python ({found}): pip install -U -e '.[plot]' (or "
            "write --out curves.json, the chart's Vega-Lite spec)"
        ) from None
    content = drawn.getvalue()
    data = content.encode("utf-8") if isinstance(content, str) else content
    return atomic_write(out, lambda handle: handle.write(data))


def run_names(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Short names for runs: each run folder's name, or its whole path where two names clash, or
    the file's path where two files share a folder. One file given twice, however spelt (a
    relative and an absolute path, a link), is one run: both get its first spelling's name. A
    name's bytes that are not UTF-8 are shown as U+FFFD (no chart can hold them)."""
    files = [metrics_path(path) for path in paths]
    first = {}  # the file itself -> its first spelling
    for file in files:
        first.setdefault(file.resolve(), file)
    distinct = list(first.values())
    names = [file.parent.resolve().name or str(file.parent) for file in distinct]
    for longer in (lambda file: str(file.parent), str):
        clashing = {name for name in names if names.count(name) > 1}
        names = [
            longer(file) if name in clashing else name
            for name, file in zip(names, distinct, strict=True)
        ]
    shown = {file: shown_name(name) for file, name in zip(distinct, names, strict=True)}
    return [shown[first[file.resolve()]] for file in files]


def main(argv: Sequence[str] | None = None) -> None:
    parser = ArgumentParser(
        prog="python -m recurrent.plot",
        description="Plot the training curves of one or more runs (their metrics.jsonl): train "
        "and validation loss, BLEU/CIDEr, learning rate, throughput and gradient norm, runs "
        "overlaid.",
    )
    parser.add_argument(
        "runs",
        nargs="+",
        metavar="RUN_DIR",
        help="run folders holding a metrics.jsonl (or the files)",
    )
    parser.add_argument(
        "--out", required=True, help="the file to write: .png, .svg, .pdf, .html or .json"
    )
    parser.add_argument(
        "--x",
        choices=sorted(X_AXES),
        default="step",
        help="plot against training steps (default) or wall time in seconds",
    )
    parser.add_argument("--width", type=int, default=560, help="width of each panel in pixels")
    args = parser.parse_args(argv)
    if not 50 <= args.width <= MAX_WIDTH:
        raise UserError(f"--width must be 50 to {MAX_WIDTH} pixels, got {args.width}")
    runs: dict[str, list[dict[str, Any]]] = {}
    for name, path in zip(run_names(args.runs), args.runs, strict=True):
        if name not in runs:  # one file under two spellings is read once
            runs[name] = read_metrics(path)
    out = save_chart(curves_chart(runs, args.x, args.width), args.out)
    lines = sum(len(records) for records in runs.values())
    print(f"wrote {out} ({len(runs)} run{'s' * (len(runs) > 1)}, {lines} metrics lines)")


def cli() -> None:
    """Console-script entry point: a user mistake becomes one line on stderr, exit status 2."""
    raise SystemExit(run_cli(main))


if __name__ == "__main__":
    cli()
