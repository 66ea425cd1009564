"""The app under load and abuse: concurrent real browser sessions against one Streamlit server.

    python bench/app_load.py                                  # 8 sessions x 5 rounds, + abuse
    python bench/app_load.py --sessions 3 --rounds 2 --json report.json --models-dir runs

Starts one server the way ``make app`` does (``python -m streamlit run app.py --server.headless
true -- --models-dir DIR``, on a free port of 127.0.0.1: no traffic leaves the machine), launches
Debian's Chromium through Playwright (never ``playwright install``) and opens ``--sessions``
browser contexts, each its own Streamlit session. In each of ``--rounds`` rounds every session,
all at once, uploads a scene it has not seen on the caption page and waits for its caption, then
switches to the text page, types a prompt and generates text. After each action a session waits
for the script run it caused to finish (counted from the ``new_session`` and ``script_finished``
messages on its websocket), then checks the page: the expected caption and text come from the
library (`caption_images`, `generate`) with the settings the page shows (for a text, with the
seed its click drew, which the page's Seed field shows), so every session's result is checked
exactly. Meanwhile one more session uploads hostile files: one just under the upload limit, one
just over it, a zip bomb renamed ``.png``, a PNG decompression bomb, a 1 x 100000 image and a
0-byte file; each must give a message naming the file (never a traceback), and the session must
caption a normal image afterwards.

Measured: whether every session got its caption and text, the time per caption (upload ->
caption shown) and per text (click -> whole text shown), median and worst, and the server's
resident memory (VmRSS) after the first round and after the last (the models are loaded once per
server in ``st.cache_resource`` and shared by all sessions, so it should not grow with rounds).
Prints a summary; ``--json`` writes the full report (tests/test_app_load.py runs a small one).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
PROMPTS = ["ROMEO:", "JULIET:", "First Citizen:", "KING RICHARD II:", "To be, or not"]
FALLBACK_PROMPTS = ["the ", "a ", "and ", "the cat", "on the"]
SERVER_START_S = 120
WAIT_MS = int(
    os.environ.get("APP_LOAD_WAIT_MS", 180_000)
)  # for one caption or text under full load


# --- the server ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def streamlit_server(models_dir: Path, log_path: Path):
    """`make app`'s command on a free localhost port; yields (url, pid); stops it afterwards."""
    port = free_port()
    command = [
        sys.executable, "-m", "streamlit", "run", "app.py",
        "--server.port", str(port),
        "--server.address", "127.0.0.1",
        "--server.headless", "true",
        "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false",
        "--", "--models-dir", str(models_dir),
    ]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key != "CRNN_MODELS_DIR"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while not healthy(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"streamlit did not start:\n{log_path.read_text(errors='replace')}"
                )
            time.sleep(0.5)
        yield url, process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in bytes."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) * 1024
    return values


def upload_limit_mb() -> int:
    """``server.maxUploadSize`` from the repo's .streamlit/config.toml (Streamlit's 200 if unset)."""
    config = REPO / ".streamlit" / "config.toml"
    found = re.search(r"^\s*maxUploadSize\s*=\s*(\d+)", config.read_text(), re.M)
    return int(found.group(1)) if found else 200


# --- what the sessions send, and what they must get back ------------------------------------------


@dataclass
class Upload:
    path: Path
    expected: str  # the caption, or for hostile files the kind of answer: "message" / "refused"


def scene_plan(folder: Path, captioner, settings: dict, sessions: int, rounds: int):
    """Per session, one fresh scene per round with the caption the library gives it (where the
    model allows, one that is not among the beams of the session's previous image)."""
    from captioner.inference import caption_images
    from captioner.scenes import render_random_scene
    from crnn_app.captioning import scene_size

    size = scene_size(captioner.cfg.data.image_size)
    beam, max_length = settings["beam_size"], settings["max_length"]
    plan, seed = [], 1_000_000
    for session in range(sessions):
        uploads, previous = [], set()
        for round_ in range(rounds):
            for _ in range(8):  # an untrained model may say the same for any image: so be it
                seed += 1
                image = render_random_scene(seed, size)[0]
                [result] = caption_images(
                    captioner, [image], beam_size=beam, max_length=max_length, n_best=beam
                )
                if result.caption and result.caption not in previous:
                    break
            path = folder / f"s{session}_r{round_}_{seed}.png"
            image.save(path)  # lossless: the app reads back this very image
            uploads.append(Upload(path, result.caption))
            previous = {text for text, _ in result.beams}
        plan.append(uploads)
    return plan


def hostile_files(folder: Path, limit_mb: int, captioner, settings: dict) -> list[Upload]:
    """Files a hostile user uploads, with the answer each must get."""
    import numpy as np
    from PIL import Image

    from captioner.data.images import load_image
    from captioner.inference import caption_images

    limit = limit_mb * 1_000_000  # the browser refuses files over maxUploadSize x 10^6 bytes
    files = []
    # Just under the limit: random noise (incompressible), a real image, so it gets a caption.
    side = int(((limit - 256 * 1024) / 3) ** 0.5)
    noise = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    near = folder / "near_limit.png"
    Image.fromarray(noise).save(near, compress_level=0)
    assert near.stat().st_size < limit, near.stat().st_size
    beam, max_length = settings["beam_size"], settings["max_length"]
    [result] = caption_images(
        captioner, [load_image(near)], beam_size=beam, max_length=max_length, n_best=beam
    )
    files.append(Upload(near, result.caption))
    over = folder / "over_limit.png"  # refused by the browser before it is sent
    over.write_bytes(near.read_bytes() + bytes(limit - near.stat().st_size + 1024 * 1024))
    files.append(Upload(over, "refused"))
    bomb = folder / "zip_bomb.png"  # 200 MB of zeros in a ~200 KB zip, named like an image
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open("zeros.bin", "w", force_zip64=True) as member:
            block = bytes(1 << 20)
            for _ in range(200):
                member.write(block)
    files.append(Upload(bomb, "message"))
    pixels = folder / "pixel_bomb.png"  # 400 million pixels in a few tens of KB
    Image.new("1", (20_000, 20_000)).save(pixels, optimize=True)
    files.append(Upload(pixels, "message"))
    tall = folder / "tall_1x100000.png"
    Image.new("L", (1, 100_000), 128).save(tall)
    files.append(Upload(tall, "message"))
    empty = folder / "empty.png"
    empty.write_bytes(b"")
    files.append(Upload(empty, "message"))
    return files


def prompts_for(vocab: list[str]) -> list[str]:
    """The round's prompts the model can read (the bundled model knows Shakespeare's names)."""
    prompts = [p for p in PROMPTS if set(p) <= set(vocab)]
    return prompts or [p for p in FALLBACK_PROMPTS if set(p) <= set(vocab)] or [""]


# --- one browser session -------------------------------------------------------------------------


class ScriptRuns:
    """The app's script runs for one page, followed in the messages its websocket receives: each
    run starts with a ``new_session`` ForwardMsg and ends with ``script_finished``, whose status
    says whether it ran to the end or was cut short by a rerun (then another run follows at once).
    A session waits for the run its action caused instead of trusting what the page shows."""

    def __init__(self, page) -> None:
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        self._parse = ForwardMsg.FromString
        self._cut_short = ForwardMsg.FINISHED_EARLY_FOR_RERUN
        self.started = 0  # runs begun
        self.completed = 0  # runs that ran to their end
        self.idle = False  # no run going and none about to start
        page.on("websocket", lambda socket: socket.on("framereceived", self._frame))

    def _frame(self, payload: bytes | str) -> None:
        if isinstance(payload, str):
            return
        try:
            message = self._parse(payload)
        except Exception:  # noqa: BLE001 - not a ForwardMsg: not ours to follow
            return
        kind = message.WhichOneof("type")
        if kind == "new_session":
            self.started += 1
            self.idle = False
        elif kind == "script_finished" and message.script_finished != self._cut_short:
            self.completed += 1
            self.idle = True

    async def wait(self, condition, what: str, seconds: float | None = None) -> None:
        seconds = WAIT_MS / 1000 if seconds is None else seconds
        deadline = time.monotonic() + seconds
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} within {seconds:.0f} s")
            await asyncio.sleep(0.05)


RUNS: dict[int, ScriptRuns] = {}  # by id(page)
SETTLE_S = 0.3  # after a run, the page swaps the run's elements in: act on the new ones
NO_RUN_S = 30  # a click that has started no run by then was lost: it is done once more
RETRIES: list[str] = []  # the clicks done twice, for the report


async def settled(page, action, what: str, *, retry: bool = True) -> float:
    """Do ``action`` (an async callable) once the app is idle; seconds until the run it caused has
    run to its end. An action that starts no run within `NO_RUN_S` (a click on an element the
    page was replacing) is done once more with ``retry``, and counted in `RETRIES`."""
    runs = RUNS[id(page)]
    await runs.wait(lambda: runs.idle, "idle app")
    await asyncio.sleep(SETTLE_S)
    started, completed = runs.started, runs.completed
    start = time.perf_counter()
    await action()
    if retry:
        try:
            await runs.wait(lambda: runs.started > started, f"run after {what}", NO_RUN_S)
        except TimeoutError:
            RETRIES.append(what)
            await action()
    await runs.wait(lambda: runs.completed > completed and runs.idle, f"run after {what}")
    return time.perf_counter() - start


async def open_page(page, url: str, heading: str) -> None:
    runs = RUNS.setdefault(id(page), ScriptRuns(page))
    await page.goto(url)
    await page.get_by_role("heading", name=heading).wait_for(timeout=WAIT_MS)
    await runs.wait(lambda: runs.completed and runs.idle, "first run")


async def go_to(page, name: str) -> None:
    """Switch pages with the sidebar entry of that name (the page's title is its heading)."""
    entry = page.get_by_test_id("stSidebar").get_by_text(name, exact=True).first
    await settled(page, entry.click, f"going to {name}")
    await page.get_by_role("heading", name=name).wait_for(timeout=WAIT_MS)


async def widget_value(page, role: str, label: str) -> str:
    """The value of the input widget with this role and visible label, once it is drawn."""
    widget = page.get_by_role(role, name=label, exact=True)
    await widget.wait_for(timeout=WAIT_MS)
    return await widget.input_value()


async def slider_value(page, label: str) -> float:
    slider = page.get_by_role("group", name=label, exact=True).get_by_role("slider")
    await slider.wait_for(timeout=WAIT_MS)
    return float(await slider.input_value())


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:400]


async def page_text(page) -> str:
    """What the page's main area says (for the report when something went wrong)."""
    try:
        return " ".join((await page.get_by_test_id("stMain").inner_text(timeout=5000)).split())[
            :600
        ]
    except Exception as err:  # noqa: BLE001 - only for the report
        return f"(unreadable: {type(err).__name__})"


async def exceptions_shown(page) -> int:
    return await page.locator("[data-testid=stException]").count()


async def upload(page, path: Path) -> None:
    uploader = page.get_by_test_id("stFileUploader").filter(has_text="Upload an image")
    await uploader.locator("input[type=file]").set_input_files(str(path))


async def caption_once(page, item: Upload) -> float:
    """Upload one image; seconds until the app has captioned it. Its caption must be shown."""
    seconds = await settled(page, lambda: upload(page, item.path), f"uploading {item.path.name}")
    caption = page.get_by_text(item.expected, exact=True)
    if not await caption.count():
        raise AssertionError(f"no caption {item.expected!r}; the page says {await page_text(page)}")
    return seconds


async def generate_once(page, prompt: str, library_text, typed: dict) -> float:
    """Type a prompt and press Generate; seconds until the text is written. It must be exactly
    ``await library_text(prompt, seed)``: the library's text for the prompt, the settings the page
    shows and the seed the click drew (the page's "Seed" field shows it). ``typed`` holds the
    prompt each page's app has (the default at first): only a new one is typed, which the app
    answers with a run."""
    if typed[id(page)] != prompt:
        box = page.get_by_role("textbox", name="Prompt")

        async def commit() -> None:
            await box.fill(prompt)
            await box.press("Control+Enter")

        await settled(page, commit, "typing the prompt", retry=False)
        typed[id(page)] = prompt
    button = page.get_by_role("button", name="Generate", exact=True)
    seconds = await settled(page, button.click, "pressing Generate")
    seed = int(await widget_value(page, "spinbutton", "Seed"))
    expected = await library_text(prompt, seed)
    shown = await page.locator("[data-testid=stCode] code").all_text_contents()
    # A text that ends with a line break loses it in the code block's DOM text (each failure of
    # this check seen had one), so line breaks at the ends do not count; every other character does.
    if not any(text.strip("\n") == expected.strip("\n") for text in shown):
        raise AssertionError(f"expected {expected!r}; the page shows {shown!r}")
    return seconds


async def hostile_session(
    page, url: str, files: list[Upload], after: Upload, clock: float
) -> tuple[list[dict], list[float]]:
    """Each hostile file, then a normal image; (a row per upload, [start, end] in seconds since
    ``clock``)."""
    span = [time.perf_counter() - clock]
    await open_page(page, url, "Caption an image")
    results = []
    for item in files + [after]:
        row = {"file": item.path.name, "bytes": item.path.stat().st_size, "expected": item.expected}
        start = time.perf_counter()
        try:
            await upload(page, item.path)
            if item.expected == "refused":  # the browser refuses it: the uploader says why
                message = page.get_by_text(re.compile(r"must be .* or smaller"))
            elif item.expected == "message":  # the app's one line, naming the file
                message = page.get_by_role("alert").filter(has_text=item.path.name)
            else:
                message = page.get_by_text(item.expected, exact=True)
            await message.first.wait_for(timeout=WAIT_MS)
            row["shown"] = " ".join((await message.first.inner_text()).split())
            row["ok"] = True
        except Exception as err:  # noqa: BLE001 - recorded in the report, which the test checks
            row["ok"], row["error"] = False, f"{type(err).__name__}: {one_line(err)}"
            row["page"] = await page_text(page)
        row["seconds"] = time.perf_counter() - start
        row["exceptions_shown"] = await exceptions_shown(page)
        results.append(row)
    return results, span + [time.perf_counter() - clock]


# --- the run -------------------------------------------------------------------------------------


def percentile_summary(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {"count": 0}
    return {
        "count": len(seconds),
        "median": statistics.median(seconds),
        "worst": max(seconds),
        "best": min(seconds),
    }


def import_library() -> None:
    """Import what the expected results are computed with: torch and torchvision take seconds."""
    for name in ("torch", "captioner.inference", "char_lm.generate", "crnn_app.models_dir"):
        importlib.import_module(name)


async def run(args: argparse.Namespace, folder: Path, url: str, pid: int) -> dict:
    from playwright.async_api import async_playwright

    # the imports go on beside the first page, which the server takes seconds to serve
    importing = asyncio.create_task(asyncio.to_thread(import_library))
    report: dict = {"sessions": args.sessions, "rounds": args.rounds, "failures": []}
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        contexts = [await browser.new_context(viewport={"width": 1280, "height": 1000})
                    for _ in range(args.sessions + 1)]  # fmt: skip
        pages = [await context.new_page() for context in contexts]
        for page in pages:
            page.set_default_timeout(WAIT_MS)

        # What the app shows by default, read from the first session's page by label.
        first = pages[0]
        await open_page(first, url, "Caption an image")
        captioner_name = await widget_value(first, "combobox", "Captioner checkpoint")
        settings = {
            "beam_size": int(await slider_value(first, "Beam size")),
            "max_length": int(await slider_value(first, "Maximum length (words)")),
        }
        await go_to(first, "Generate text")
        char_lm_name = await widget_value(first, "combobox", "Language model checkpoint")
        settings.update(
            length=int(await slider_value(first, "Length (characters)")),
            temperature=await slider_value(first, "Temperature"),
            top_p=await slider_value(first, "Top-p (1 = off)"),
            top_k=int(await widget_value(first, "spinbutton", "Top-k (0 = off)")),
            prompt=await widget_value(first, "textbox", "Prompt"),
        )
        report["settings"] = {"captioner": captioner_name, "char_lm": char_lm_name, **settings}

        await importing
        import torch

        from captioner.inference import load_captioner
        from char_lm.generate import generate, load_char_lm, trained_precision
        from crnn_app.models_dir import checkpoint_path

        preparing = time.perf_counter()
        captioner = load_captioner(str(checkpoint_path(args.models_dir, captioner_name)))
        model, vocab, config = load_char_lm(checkpoint_path(args.models_dir, char_lm_name))
        plan = scene_plan(folder, captioner, settings, args.sessions + 1, args.rounds)
        prompts = prompts_for(vocab)
        texts_by_seed: dict[tuple[str, int], str] = {}
        library_lock = asyncio.Lock()  # one library generation at a time, off the event loop

        async def library_text(prompt: str, seed: int) -> str:
            """The library's text for a prompt, the page's settings and a seed (cached)."""
            if (prompt, seed) not in texts_by_seed:

                def run() -> str:
                    characters = generate(
                        model, vocab, prompt, settings["length"],
                        temperature=settings["temperature"], top_k=settings["top_k"],
                        top_p=settings["top_p"], generator=torch.Generator().manual_seed(seed),
                        precision=trained_precision(model, config),  # as the app runs it
                    )  # fmt: skip
                    return prompt + "".join(characters)

                async with library_lock:
                    texts_by_seed[prompt, seed] = await asyncio.to_thread(run)
            return texts_by_seed[prompt, seed]

        report["upload_limit_bytes"] = upload_limit_mb() * 1_000_000
        hostile = (
            hostile_files(folder, upload_limit_mb(), captioner, settings) if args.abuse else []
        )

        report["prepare_s"] = time.perf_counter() - preparing  # expected results, hostile files
        await go_to(first, "Caption an image")
        for page in pages[1 : args.sessions]:
            await open_page(page, url, "Caption an image")

        abuse_task = None
        clock = time.perf_counter()
        if args.abuse:
            abuse_task = asyncio.create_task(
                hostile_session(pages[-1], url, hostile, plan[-1][0], clock)
            )

        captions, texts = [], []
        typed = {id(page): settings["prompt"] for page in pages}  # what each page's app has

        async def one_round(session: int, round_: int) -> None:
            page = pages[session]
            try:
                if round_ > 0:
                    await go_to(page, "Caption an image")
                seconds = await caption_once(page, plan[session][round_])
                captions.append({"session": session, "round": round_, "seconds": seconds})
                await go_to(page, "Generate text")
                prompt = prompts[round_ % len(prompts)]
                seconds = await generate_once(page, prompt, library_text, typed)
                texts.append({"session": session, "round": round_, "seconds": seconds})
            except Exception as err:  # noqa: BLE001 - recorded in the report, which the test checks
                report["failures"].append(
                    {"session": session, "round": round_, "page": await page_text(page),
                     "error": f"{type(err).__name__}: {one_line(err)}", "detail": str(err)}
                )  # fmt: skip
            if await exceptions_shown(page):
                report["failures"].append(
                    {"session": session, "round": round_, "error": "a traceback is shown"}
                )

        memory_by_round = []
        started = time.perf_counter()
        report["rounds_span"] = [started - clock]
        for round_ in range(args.rounds):
            await asyncio.gather(*(one_round(s, round_) for s in range(args.sessions)))
            memory_by_round.append(memory(pid))
            print(
                f"round {round_ + 1}/{args.rounds} done at {time.perf_counter() - started:.0f} s; "
                f"server RSS {memory_by_round[-1]['VmRSS'] / 2**20:.0f} MiB",
                flush=True,
            )
        report["rounds_span"].append(time.perf_counter() - clock)
        report["abuse"], report["abuse_span"] = await abuse_task if abuse_task else ([], [])
        report["wall_s"] = time.perf_counter() - started
        await browser.close()

    report["captions"], report["texts"], report["retries"] = captions, texts, RETRIES
    report["caption_seconds"] = percentile_summary([c["seconds"] for c in captions])
    report["text_seconds"] = percentile_summary([t["seconds"] for t in texts])
    report["rss_by_round"] = [m["VmRSS"] for m in memory_by_round]
    report["rss_peak"] = memory_by_round[-1]["VmHWM"]
    report["rss_growth"] = memory_by_round[-1]["VmRSS"] / memory_by_round[0]["VmRSS"] - 1
    report["all_ok"] = (
        not report["failures"]
        and len(captions) == len(texts) == args.sessions * args.rounds
        and all(row["ok"] and not row["exceptions_shown"] for row in report["abuse"])
    )
    return report


def print_report(report: dict) -> None:
    from bench.recurrent_core import machine

    caps, txts = report["caption_seconds"], report["text_seconds"]
    print(f"\nmachine: {machine()}; load average {os.getloadavg()[0]:.1f} at the end")
    print(f"settings the page showed: {report['settings']}")
    print(f"expected results and hostile files prepared in {report['prepare_s']:.0f} s")
    print(
        f"{report['sessions']} sessions x {report['rounds']} rounds in {report['wall_s']:.0f} s: "
        f"{caps.get('count', 0)} captions and {txts.get('count', 0)} texts right, "
        f"{len(report['failures'])} failures"
    )
    if caps.get("count"):
        print(
            f"seconds per caption (upload -> caption shown): median {caps['median']:.1f}, "
            f"worst {caps['worst']:.1f}, best {caps['best']:.1f}"
        )
    if txts.get("count"):
        print(
            f"seconds per text (click -> whole text shown): median {txts['median']:.1f}, "
            f"worst {txts['worst']:.1f}, best {txts['best']:.1f}"
        )
    if report["retries"]:
        print(f"actions that started no run and were done again: {report['retries']}")
    rss = ", ".join(f"{value / 2**20:.0f}" for value in report["rss_by_round"])
    print(
        f"server RSS after each round (MiB): {rss}; after the last vs after the first "
        f"{report['rss_growth']:+.1%}; peak {report['rss_peak'] / 2**20:.0f} MiB"
    )
    for row in report["abuse"]:
        shown = row.get("shown") or row.get("error", "")
        print(
            f"  abuse {row['file']:<18} {row['bytes'] / 1e6:8.2f} MB  "
            f"{'ok' if row['ok'] and not row['exceptions_shown'] else 'FAILED':6} "
            f"{row['seconds']:5.1f} s  {shown[:110]}"
        )
        if "page" in row:
            print(f"    the page said: {row['page']}")
    for failure in report["failures"]:
        print(f"  FAILED session {failure['session']} round {failure['round']}: {failure['error']}")
        print(f"    the page said: {failure['page']}")
    print("all ok" if report["all_ok"] else "NOT all ok")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=8, help="concurrent browser sessions")
    parser.add_argument("--rounds", type=int, default=5, help="captions and texts per session")
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--no-abuse", dest="abuse", action="store_false", help="no hostile session")
    parser.add_argument("--json", type=Path, help="write the whole report here")
    args = parser.parse_args(argv)
    if args.sessions < 1 or args.rounds < 1:
        parser.error("--sessions and --rounds must be at least 1")
    args.models_dir = args.models_dir.resolve()
    if not args.models_dir.is_dir():
        parser.error(f"--models-dir {args.models_dir} is not a folder of checkpoints")
    with tempfile.TemporaryDirectory(prefix="crnn-app-load-") as tmp:
        folder = Path(tmp)
        with streamlit_server(args.models_dir, folder / "streamlit.log") as (url, pid):
            report = asyncio.run(run(args, folder, url, pid))
    report["machine_load_average"] = os.getloadavg()[0]
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0 if report["all_ok"] else 1


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
