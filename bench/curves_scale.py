"""Training curves of a long run: read whole or followed, every point or thinned, side by side.

    python bench/curves_scale.py                      # 60,000 train lines, Python and browser
    python bench/curves_scale.py --lines 20000 --no-browser

A run logging every 50 steps at 50 steps/s (a char LM on a GPU) writes 60,000 train lines in
17 hours; every train line gives four series (loss, learning rate, throughput, gradient norm). The
script writes such a run's metrics.jsonl (an eval line every 10 train lines, a noisy falling loss
with a few spikes). It times getting the run's rows after a line is appended: reading the file
whole against following it (`crnn_app.curves.MetricsTail`, which parses only what was appended).
Then it draws the curves two ways: every point, as the charts were drawn before 2026-12-06, and
thinned (`recurrent.plot.thin`: per series the first, last, lowest and highest point of each of
1,000 ranges of steps), as the app and `python -m recurrent.plot` draw them now.
For each: the rows sent, the size of the charts' Vega-Lite JSON, the Python time to build it from
the lines, and, with the browser (Debian's chromium through Playwright), the time the charts take
to draw in a self-contained HTML page. Then it serves the app on the run (`make app`'s command)
and opens its Training curves page, following the run while a line a second is appended: the time
until the charts are drawn, the time the page's main thread is blocked per 30 s, the page's
JavaScript heap, and the server's resident memory.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import altair as alt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.app_load import CHROMIUM, CHROMIUM_ARGS, memory, streamlit_server  # noqa: E402
from bench.recurrent_core import machine  # noqa: E402
from crnn_app.curves import MetricsTail, summarize  # noqa: E402
from recurrent.errors import UserError, run_cli  # noqa: E402
from recurrent.plot import (  # noqa: E402
    BUCKETS,
    METRICS_FILE,
    curves_chart,
    metrics_frame,
    read_metrics,
    save_chart,
)

STEPS_PER_LINE = 50
EVAL_EVERY = 10  # train lines
FOLLOW_S = 30


def train_line(number: int, rng: random.Random) -> dict:
    step = number * STEPS_PER_LINE
    loss = 1.2 + 2.5 * math.exp(-number / 5000) + rng.gauss(0, 0.02)
    if rng.random() < 1e-4:
        loss += rng.uniform(1, 5)  # a spike: thinning must keep it
    return {
        "kind": "train",
        "step": step,
        "time_s": step / 50,
        "timestamp": time.time() - 3600,
        "lr": 3e-3 * 0.5 * (1 + math.cos(math.pi * min(number / 60_000, 1))),
        "loss": loss,
        "grad_norm": abs(rng.gauss(0.5, 0.1)),
        "throughput": rng.gauss(150_000, 3000),
        "throughput_unit": "chars/s",
    }


def write_run(folder: Path, lines: int) -> Path:
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / METRICS_FILE).open("w") as stream:
        for number in range(1, lines + 1):
            line = train_line(number, rng)
            stream.write(json.dumps(line) + "\n")
            if number % EVAL_EVERY == 0:
                scores = {"val_loss": line["loss"] + 0.05}
                evaluation = {"kind": "eval", "step": line["step"], "time_s": line["time_s"]}
                stream.write(json.dumps({**evaluation, "best": False, "scores": scores}) + "\n")
    return folder / METRICS_FILE


def build(records: list[dict], buckets: int | None) -> tuple[object, int, int, float]:
    """(chart, rows sent, JSON bytes, seconds) for the stacked charts of one run."""
    started = time.perf_counter()
    chart = curves_chart({"run": records}, buckets=buckets)
    with alt.data_transformers.disable_max_rows():  # as Altair's own save and Streamlit do
        spec = json.dumps(chart.to_dict())
    seconds = time.perf_counter() - started
    rows = sum(len(values) for values in json.loads(spec)["datasets"].values())
    return chart, rows, len(spec), seconds


def reread_costs(metrics: Path) -> tuple[float, float]:
    """Seconds to get a run's rows after a line is appended: reading the file whole (as the page
    did before 2026-12-06) against following it (`MetricsTail`, the page now); medians of 5, on a
    copy of the run."""
    copy = metrics.with_name("followed.jsonl")
    shutil.copyfile(metrics, copy)
    tail, rng, number = MetricsTail(copy, "run"), random.Random(2), 10**6
    tail.read()
    whole, followed = [], []
    for _ in range(5):
        number += 1
        with copy.open("a") as stream:
            stream.write(json.dumps(train_line(number, rng)) + "\n")
        started = time.perf_counter()
        lines = read_metrics(copy)
        summarize(lines), metrics_frame({"run": lines})
        whole.append(time.perf_counter() - started)
        started = time.perf_counter()
        tail.read()
        followed.append(time.perf_counter() - started)
    copy.unlink()
    return statistics.median(whole), statistics.median(followed)


def browser_draw_s(playwright, page_file: Path) -> float:
    """Seconds from opening ``page_file`` until its four charts are drawn."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        started = time.perf_counter()
        page.goto(page_file.as_uri())
        page.wait_for_function(
            "() => document.querySelectorAll('.vega-embed canvas, .vega-embed svg.marks').length",
            timeout=600_000,
        )
        page.evaluate("() => new Promise(done => requestAnimationFrame(() => setTimeout(done)))")
        return time.perf_counter() - started
    finally:
        browser.close()


def follow_app(playwright, models_dir: Path, metrics: Path, log: Path) -> dict[str, float]:
    """The app's Training curves page on the run, following it while it grows."""
    from playwright.sync_api import expect

    stop = threading.Event()

    def grow() -> None:
        rng, number = random.Random(1), sum(1 for _ in metrics.open())
        while not stop.wait(1.0):
            number += 1
            with metrics.open("a") as stream:
                stream.write(json.dumps({**train_line(number, rng), "timestamp": time.time()}))
                stream.write("\n")

    with streamlit_server(models_dir, log) as (url, pid):
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            link = page.get_by_text("Training curves", exact=True).first
            expect(link).to_be_visible(timeout=120_000)
            started = time.perf_counter()
            link.click()
            page.wait_for_function(
                "() => document.querySelectorAll('.vega-embed canvas, .vega-embed svg.marks').length >= 4",
                timeout=600_000,
            )
            drawn = time.perf_counter() - started
            page.evaluate(
                "() => { window.gaps = []; let last = performance.now(); setInterval(() => {"
                " const now = performance.now(); window.gaps.push(now - last); last = now; }, 100);"
                " }"
            )
            grower = threading.Thread(target=grow)
            grower.start()
            try:
                page.wait_for_timeout(FOLLOW_S * 1000)
            finally:
                stop.set()
                grower.join()
            gaps = page.evaluate("() => window.gaps")
            heap = page.evaluate("() => performance.memory ? performance.memory.usedJSHeapSize : 0")
            server = memory(pid)
        finally:
            browser.close()
    return {
        "drawn_s": drawn,
        "blocked_s": sum(max(0.0, gap - 100) for gap in gaps) / 1000,
        "longest_gap_s": max(gaps) / 1000,
        "heap_mb": heap / 1e6,
        "server_rss_mb": server["VmRSS"] / 1e6,
        "server_peak_mb": server["VmHWM"] / 1e6,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=60_000, help="train lines of the run")
    parser.add_argument("--no-browser", action="store_true", help="the Python side only")
    args = parser.parse_args(argv)
    if args.lines < 1:
        raise UserError(f"--lines must be at least 1, got {args.lines}")
    if not args.no_browser and not Path(CHROMIUM).exists():
        raise UserError(
            f"{CHROMIUM} is missing; run bash scripts/ensure_chromium.sh or pass --no-browser"
        )
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        metrics = write_run(root / "models" / "long", args.lines)
        records = read_metrics(metrics)
        print(
            f"run: {args.lines:,} train lines, {len(records) - args.lines:,} eval lines, "
            f"{metrics.stat().st_size / 1e6:.1f} MB"
        )
        whole_s, followed_s = reread_costs(metrics)
        print(
            f"a line appended, then the rows of the run: {whole_s:.2f} s reading the file whole, "
            f"{followed_s * 1000:.1f} ms following it (MetricsTail), "
            f"{whole_s / followed_s:.0f}x"
        )
        results = {}
        for name, buckets in (("every point", None), ("thinned", BUCKETS)):
            chart, rows, size, seconds = build(records, buckets)
            results[name] = {"rows": rows, "json_mb": size / 1e6, "build_s": seconds}
            if not args.no_browser:
                page_file = root / f"{name.replace(' ', '_')}.html"
                save_chart(chart, page_file)
                results[name]["page_file"] = page_file
        if not args.no_browser:
            from playwright.sync_api import sync_playwright

            with sync_playwright() as playwright:
                for result in results.values():
                    result["draw_s"] = browser_draw_s(playwright, result.pop("page_file"))
                app = follow_app(playwright, root / "models", metrics, root / "streamlit.log")
        full, thinned = results["every point"], results["thinned"]
        for name, result in results.items():
            line = (
                f"{name:12s} {result['rows']:9,} rows  {result['json_mb']:6.2f} MB of Vega-Lite  "
                f"built in {result['build_s']:5.2f} s"
            )
            if "draw_s" in result:
                line += f"  drawn by chromium in {result['draw_s']:5.1f} s"
            print(line)
        print(
            f"thinned / every point: {full['rows'] / thinned['rows']:.0f}x fewer rows, "
            f"{full['json_mb'] / thinned['json_mb']:.0f}x less JSON, "
            f"built {full['build_s'] / thinned['build_s']:.1f}x faster"
            + (
                f", drawn {full['draw_s'] / thinned['draw_s']:.1f}x faster"
                if not args.no_browser
                else ""
            )
        )
        if not args.no_browser:
            print(
                f"the app's Training curves page, following the run: charts drawn in "
                f"{app['drawn_s']:.1f} s; main thread blocked {app['blocked_s']:.1f} s of "
                f"{FOLLOW_S} s (longest {app['longest_gap_s']:.2f} s); JS heap {app['heap_mb']:.0f} MB; "
                f"server {app['server_rss_mb']:.0f} MB resident, peak {app['server_peak_mb']:.0f} MB"
            )


if __name__ == "__main__":
    raise SystemExit(run_cli(main))  # a mistake (a file, a flag): one line, exit status 2
