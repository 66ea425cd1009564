"""The app in a real browser: `streamlit run app.py` on a free port, driven by Debian's chromium.

Playwright's Python package drives /usr/bin/chromium (never `playwright install`, which downloads
a browser; `make test` installs chromium with apt when it is missing). The test uploads an image
file, waits for the caption the library gives for it, generates text on the other page, and saves
screenshots to docs/screenshots/. It uses the bundled demo models when models/ has them, else two
tiny models it trains itself.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from tiny_models import train_tiny_captioner, train_tiny_char_lm

from captioner.data.images import load_image
from captioner.inference import caption_images, load_captioner
from captioner.scenes import MIN_SIZE, generate_dataset, render_random_scene
from char_lm.generate import generate, load_char_lm

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = REPO / "docs" / "screenshots"
BUNDLED = {"captioner": "scenes_captioner.pt", "char_lm": "shakespeare_char.pt"}
SERVER_START_S = 90
CAPTION_WAIT_MS = 90_000
# The app's text page defaults (app.py): the library is asked for the same text.
DEFAULT_LENGTH, DEFAULT_TEMPERATURE, DEFAULT_SEED = 300, 0.8, 0


def _tiny_models(root: Path) -> Path:
    """Train a tiny captioner and char LM (seconds) into root/models; return that folder."""
    models_dir = root / "models"
    annotations = generate_dataset(root / "scenes", 24, seed=0, size=MIN_SIZE)
    train_tiny_captioner(models_dir / "captioner", annotations)
    train_tiny_char_lm(models_dir / "char_lm", root / "text.txt")
    return models_dir


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> dict[str, Path]:
    bundled = REPO / "models"
    if all((bundled / name).is_file() for name in BUNDLED.values()):
        return {
            "dir": bundled,
            "captioner": bundled / BUNDLED["captioner"],
            "char_lm": bundled / BUNDLED["char_lm"],
        }
    models_dir = _tiny_models(tmp_path_factory.mktemp("browser"))
    return {
        "dir": models_dir,
        "captioner": models_dir / "captioner" / "best.pt",
        "char_lm": models_dir / "char_lm" / "best.pt",
    }


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def server(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    port = _free_port()
    log_path = tmp_path_factory.mktemp("server") / "streamlit.log"
    command = [
        sys.executable, "-m", "streamlit", "run", "app.py",
        "--server.port", str(port),
        "--server.address", "127.0.0.1",
        "--server.headless", "true",
        "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false",
        "--", "--models-dir", str(models["dir"]),
    ]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key != "CRNN_MODELS_DIR"}
    env["OMP_NUM_THREADS"] = "1"  # as in this process (see one_thread)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while not _healthy(url):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"streamlit did not start:\n{log_path.read_text(errors='replace')}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.fail(
            f"{CHROMIUM} is missing; run `make test`, which installs Debian's chromium "
            "(scripts/ensure_chromium.sh) before the tests"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing; run `make test` (it installs '.[dev]')")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield chromium
        finally:
            chromium.close()


def _expected_text(path: Path, prompt: str) -> str:
    model, vocab, _ = load_char_lm(path)
    generator = torch.Generator().manual_seed(DEFAULT_SEED)
    characters = generate(
        model, vocab, prompt, DEFAULT_LENGTH, temperature=DEFAULT_TEMPERATURE, generator=generator
    )
    return prompt + "".join(characters)


def test_caption_upload_and_generate_text_in_a_browser(
    server: str, browser, models: dict[str, Path], tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    image_path = tmp_path / "fresh_scene.png"
    render_random_scene(20240601, 96)[0].save(image_path)
    captioner = load_captioner(str(models["captioner"]))
    beam_size = captioner.cfg.decode.beam_size  # the app's default
    [expected] = caption_images(
        captioner, [load_image(image_path)], beam_size=beam_size, n_best=beam_size
    )
    _, vocab, _ = load_char_lm(models["char_lm"])
    prompt = "ROMEO:" if set("ROMEO:") <= set(vocab) else "the cat"
    expected_text = _expected_text(models["char_lm"], prompt)

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 1300})
    page.set_default_timeout(CAPTION_WAIT_MS)
    page.goto(server)
    expect(page.get_by_role("heading", name="Caption an image")).to_be_visible(
        timeout=CAPTION_WAIT_MS
    )

    page.locator("input[type=file]").set_input_files(str(image_path))
    caption = page.locator("h3", has_text=expected.caption)
    expect(caption.first).to_be_visible(timeout=CAPTION_WAIT_MS)
    assert caption.first.inner_text().strip() == expected.caption
    table = page.locator("[data-testid=stTable]")
    for text, _ in expected.beams:  # every beam, with its log-probability
        expect(table).to_contain_text(text, timeout=CAPTION_WAIT_MS)
    page.wait_for_function(
        "() => Array.from(document.images).every(image => image.complete && image.naturalWidth)"
    )
    page.wait_for_timeout(500)  # let the last paint finish
    page.screenshot(path=str(SCREENSHOTS / "caption.png"), full_page=True)
    assert page.locator("[data-testid=stException]").count() == 0

    page.get_by_text("Generate text", exact=True).first.click()
    expect(page.get_by_role("heading", name="Generate text")).to_be_visible(timeout=CAPTION_WAIT_MS)
    prompt_box = page.get_by_role("textbox", name="Prompt")
    prompt_box.fill(prompt)
    prompt_box.press("Control+Enter")  # commit the text area before pressing the button
    page.wait_for_timeout(500)
    page.get_by_role("button", name="Generate").click()
    code = page.locator("[data-testid=stCode] code").first
    expect(code).to_contain_text(expected_text[-20:].strip(), timeout=CAPTION_WAIT_MS)
    shown = code.inner_text()
    assert shown.startswith(prompt)
    assert " ".join(shown.split()) == " ".join(expected_text.split())
    page.screenshot(path=str(SCREENSHOTS / "generate.png"), full_page=True)
    assert page.locator("[data-testid=stException]").count() == 0
    page.close()
