"""The app under load and abuse, and models-directory paths that try to escape the folder.

The load test runs bench/app_load.py small (3 sessions x 2 rounds, plus a session sending hostile
files) against a real Streamlit server with Chromium, on two tiny models trained here in seconds;
the full 8 x 5 run on the bundled models is a benchmark (docs/benchmarks.md), not a test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import train_tiny_captioner, train_tiny_char_lm

from char_lm.config import CharLMConfig, ModelConfig
from char_lm.model import CharLM
from crnn_app.models_dir import checkpoint_path, list_checkpoints
from recurrent.checkpoint import save_checkpoint
from recurrent.config import to_dict
from recurrent.errors import UserError

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")


# --- models-dir paths that escape the folder -----------------------------------------------------


def fake_checkpoint(path: Path) -> Path:
    """A small but complete char_lm checkpoint (the listing checks the weights fit the config)."""
    cfg = CharLMConfig(model=ModelConfig(embed_size=2, num_layers=1, hidden_size=4))
    payload = {"task": "char_lm", "config": to_dict(cfg), "vocab": ["a", "b"]}
    save_checkpoint({**payload, "model": CharLM(cfg.model, 2).state_dict()}, path)
    return path


@pytest.fixture
def hostile_models_dir(tmp_path: Path) -> dict[str, Path]:
    models = tmp_path / "models"
    outside = tmp_path / "outside"
    (models / "run").mkdir(parents=True)
    outside.mkdir()
    inside = fake_checkpoint(models / "run" / "best.pt")
    secret = fake_checkpoint(outside / "secret.pt")
    (models / "escape.pt").symlink_to(secret)  # a file link out
    (models / "linked_run").symlink_to(outside, target_is_directory=True)  # a folder link out
    (models / "hop.pt").symlink_to(models / "escape.pt")  # a link to a link out
    (models / "alias.pt").symlink_to(inside)  # a link that stays inside: allowed
    (models / "dangling.pt").symlink_to(models / "gone.pt")  # points at nothing
    (models / "loop_a.pt").symlink_to(models / "loop_b.pt")  # a cycle
    (models / "loop_b.pt").symlink_to(models / "loop_a.pt")
    link_to_models = tmp_path / "models_link"
    link_to_models.symlink_to(models, target_is_directory=True)
    return {"models": models, "inside": inside, "secret": secret, "link": link_to_models}


def test_symlinks_out_of_the_models_dir_are_refused(hostile_models_dir: dict[str, Path]) -> None:
    models = hostile_models_dir["models"]
    for name in ("escape.pt", "hop.pt", "linked_run/secret.pt", "../outside/secret.pt"):
        with pytest.raises(UserError, match="outside the models directory"):
            checkpoint_path(models, name)
    with pytest.raises(UserError, match="outside the models directory"):
        checkpoint_path(models, hostile_models_dir["secret"])  # an absolute path
    # Links that stay inside, and a models dir that is itself reached through a link, are fine.
    assert checkpoint_path(models, "alias.pt") == hostile_models_dir["inside"].resolve()
    linked = hostile_models_dir["link"]
    assert checkpoint_path(linked, "run/best.pt") == hostile_models_dir["inside"].resolve()
    with pytest.raises(UserError, match="outside the models directory"):
        checkpoint_path(linked, "escape.pt")
    with pytest.raises(UserError, match="symlink loop|not a .pt file"):  # (loops: Python < 3.13)
        checkpoint_path(models, "loop_a.pt")
    with pytest.raises(UserError, match="not a .pt file"):
        checkpoint_path(models, "dangling.pt")


def test_the_listing_skips_escaping_broken_and_looping_links(
    hostile_models_dir: dict[str, Path],
) -> None:
    # One bad entry must never hide the others: each is listed as skipped with its reason.
    listing = list_checkpoints(hostile_models_dir["models"])
    assert sorted(entry.name for entry in listing.entries) == ["alias.pt", "run/best.pt"]
    reasons = dict(listing.skipped)
    assert "outside the models directory" in reasons["escape.pt"]
    assert "outside the models directory" in reasons["hop.pt"]
    assert set(reasons) == {"escape.pt", "hop.pt", "dangling.pt", "loop_a.pt", "loop_b.pt"}
    assert all(reason for reason in reasons.values())
    assert not any("secret" in entry.name for entry in listing.entries)  # linked_run: not followed


# --- the app under load --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory, scenes_annotations: Path) -> Path:
    root = tmp_path_factory.mktemp("load")
    models = root / "models"
    train_tiny_captioner(models / "captioner", scenes_annotations)
    train_tiny_char_lm(models / "char_lm", root / "text.txt")
    return models


@pytest.mark.browser
@pytest.mark.timeout(600)
def test_concurrent_sessions_and_a_hostile_one(tiny_models_dir: Path, tmp_path: Path) -> None:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing; run `make test`, which installs Debian's chromium")
    report_path = tmp_path / "report.json"
    command = [
        sys.executable, "bench/app_load.py",
        "--sessions", "2", "--rounds", "2",
        "--models-dir", str(tiny_models_dir),
        "--json", str(report_path),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=560)
    assert report_path.is_file(), result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    summary = result.stdout[-3000:]

    # Every session got every caption and every text, checked against the library.
    assert not report["failures"], summary
    assert report["caption_seconds"]["count"] == 4 and report["text_seconds"]["count"] == 4
    assert report["settings"]["captioner"] == "captioner/best.pt"  # the app's first listed one
    # The models are loaded once and shared: memory after the last round is at most 10% above the
    # memory after the first.
    assert report["rss_growth"] <= 0.10, summary
    # Each hostile upload got its one-line answer naming the file, never a traceback, and the
    # hostile session still captions a normal image afterwards.
    abuse = {row["file"]: row for row in report["abuse"]}
    assert all(row["ok"] and row["exceptions_shown"] == 0 for row in abuse.values()), summary
    for name in ("zip_bomb.png", "pixel_bomb.png", "tall_1x100000.png", "empty.png"):
        assert abuse[name]["shown"].count(name) == 1, abuse[name]
    assert "or smaller" in abuse["over_limit.png"]["shown"]
    assert abuse["near_limit.png"]["bytes"] > 0.98 * report["upload_limit_bytes"]
    # ... while the other sessions were busy: the hostile session ran during the rounds.
    assert report["abuse_span"][0] < report["rounds_span"][1]
    assert report["abuse_span"][1] > report["rounds_span"][0]
    assert report["all_ok"], summary
