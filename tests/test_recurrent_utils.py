"""Config loading and overrides, checkpoints, sampling filters, LR schedule."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import errno
import importlib
import io
import math
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
import types
import typing
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from captioner.config import CaptionerConfig
from recurrent import config as config_module
from recurrent import errors
from recurrent.checkpoint import (
    FORMAT_VERSION,
    check_same_architecture,
    check_state_dict,
    export_checkpoint,
    first_difference,
    load_checkpoint,
    save_checkpoint,
    shown_name,
)
from recurrent.config import from_dict, load_config, run_dir, to_dict, with_defaults
from recurrent.errors import (
    EXIT_USER_ERROR,
    STOPPED,
    TRAINING_STOPPED,
    RunStopped,
    UserError,
    loader_workers,
    run_cli,
)
from recurrent.files import FOREIGN_TEMP_AGE_S, HOST, atomic_write_text
from recurrent.sampling import draw, filter_logits, sample_next
from recurrent.training import pick_device, warmup_cosine

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class Model:
    cell: str = "lstm"
    hidden_size: int = 8
    dropout: float = 0.0
    tied: bool = False
    note: str | None = None


@dataclasses.dataclass
class Train:
    max_steps: int = 10
    lr: float = 1e-3


@dataclasses.dataclass
class Config:
    model: Model = dataclasses.field(default_factory=Model)
    train: Train = dataclasses.field(default_factory=Train)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_yaml_and_overrides(tmp_path):
    path = write(tmp_path, "model:\n  cell: gru\n  hidden_size: 16\ntrain:\n  lr: 1\n")
    cfg = load_config(Config, path, ["train.max_steps=3", "model.dropout=0.25", "model.tied=true"])
    assert cfg.model == Model(cell="gru", hidden_size=16, dropout=0.25, tied=True)
    assert cfg.train == Train(max_steps=3, lr=1.0)
    assert isinstance(cfg.train.lr, float)
    assert to_dict(cfg)["model"]["hidden_size"] == 16
    # the same key set twice: the last --set wins, as for any repeated flag
    assert load_config(Config, path, ["train.lr=0.5", "train.lr=0.25"]).train.lr == 0.25


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.hiden_size=3"], "unknown config key 'model.hiden_size'"),
        (["nope.x=3"], "unknown config key 'nope.x'"),
        (["train.max_steps=ten"], "config key 'train.max_steps': expected int"),
        (["train.max_steps=1.5"], "config key 'train.max_steps': expected int"),
        (["model.tied=3"], "config key 'model.tied': expected bool"),
        (["model.cell"], "--set expects key=value"),
        (["model.cell=a: b"], "expected a string, got {'a': 'b'}; a value with ': '"),
    ],
)
def test_bad_overrides_name_the_key(overrides, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_config(Config, None, overrides)


def test_a_bad_value_names_the_file_it_came_from(tmp_path):
    """A value of the wrong type in the config file names the file; the same value given with
    --set does not (it names the key the user just typed)."""
    with pytest.raises(UserError) as caught:
        load_config(Config, write(tmp_path, "train:\n  lr: fast\n"))
    path = tmp_path / "c.yaml"
    assert str(caught.value) == f"config file {path}: config key 'train.lr': expected float " + (
        "(a number such as 3e-4), got 'fast'"
    )
    with pytest.raises(UserError) as caught:
        load_config(Config, write(tmp_path, "train:\n  lr: 0.1\n"), ["train.lr=fast"])
    assert str(caught.value).startswith("config key 'train.lr': expected float")
    # a bad value in the file that --set replaces is never read: the override wins, as always
    bad = write(tmp_path, "train:\n  lr: fast\n  max_steps: 99\n")
    assert load_config(Config, bad, ["train.lr=0.5"]).train == Train(max_steps=99, lr=0.5)


def test_a_value_out_of_bounds_names_the_file_it_came_from(tmp_path):
    """With the task's bounds (as the training commands pass them), a number the file puts out
    of bounds names the file; from --set, the key alone (the task's check_config says it)."""
    bounds = {"train.lr": "(0, 10]"}
    path = write(tmp_path, "train:\n  lr: 20\n")
    with pytest.raises(UserError) as caught:
        load_config(Config, path, bounds=bounds)
    assert (
        str(caught.value)
        == f"config file {path}: config key 'train.lr' must be in (0, 10], got 20.0"
    )
    assert load_config(Config, path).train.lr == 20.0  # without bounds: the caller checks them
    assert load_config(Config, path, ["train.lr=0.5"], bounds=bounds).train.lr == 0.5
    config = load_config(
        Config, write(tmp_path, "train:\n  lr: 0.5\n"), ["train.lr=20"], bounds=bounds
    )
    assert config.train.lr == 20.0  # an override's bounds: check_config's, naming the key


def test_a_missing_config_names_the_tasks_configs_by_a_path_that_reaches_them(
    tmp_path, monkeypatch
):
    """The line named `configs/<task>/<name>.yaml`, a placeholder: it now names the task's own
    folder and its files, by a path that works from the working folder, and one of them loads."""
    from char_lm.config import CharLMConfig

    for cls, task in ((CharLMConfig, "char_lm"), (CaptionerConfig, "captioner")):
        for cwd in (REPO, tmp_path):  # in the repository, and elsewhere
            monkeypatch.chdir(cwd)
            with pytest.raises(UserError) as caught:
                load_config(cls, "nope.yaml")
            said = re.fullmatch(
                r"config file not found: nope\.yaml; pass --config (\S+)/<name>\.yaml \(\1 holds "
                r"(.+)\)",
                str(caught.value),
            )
            assert said, str(caught.value)
            folder, names = said.groups()
            assert (folder == f"configs/{task}") == (cwd == REPO), folder
            assert names.split(", ") == sorted(p.name for p in (REPO / "configs" / task).iterdir())
            assert isinstance(load_config(cls, f"{folder}/tiny.yaml"), cls)  # the advice followed


def test_unknown_yaml_key_and_bad_yaml(tmp_path):
    with pytest.raises(UserError, match="unknown config key 'model.layers'") as caught:
        path = write(tmp_path, "model:\n  layers: 2\n")
        load_config(Config, path)
    assert str(path) in str(caught.value)  # the message names the file too
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(Config, write(tmp_path, "model: [unclosed\n"))
    with pytest.raises(UserError, match="config file not found"):
        load_config(Config, tmp_path / "missing.yaml")
    with pytest.raises(UserError, match="not valid YAML: found the key 'lr' twice") as caught:
        load_config(Config, write(tmp_path, "train:\n  lr: 0.1\n  max_steps: 3\n  lr: 0.2\n"))
    assert str(caught.value).endswith("twice (line 4, column 3)")  # where, not PyYAML's excerpt
    with pytest.raises(UserError, match=r"expected ',' or '\]'.*\(line 3, column 1\)$"):
        load_config(Config, write(tmp_path, "train:\n  lr: [0.1\n"))
    assert (
        load_config(Config, write(tmp_path, "model: {cell: gru}\ntrain: {lr: 0.1}\n")).train.lr
        == 0.1
    )
    assert load_config(Config, None, ['model.cell="a: b"']).model.cell == "a: b"  # quoted


def test_checkpoint_round_trip_and_atomic_write(tmp_path):
    path = tmp_path / "run" / "last.pt"
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    save_checkpoint({"task": "char_lm", "config": {"a": 1}, "vocab": ["a"], "model": state}, path)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left behind
    text = tmp_path / "notes.txt"
    text.write_text("hello world\n")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(text)
    loaded = load_checkpoint(path, task="char_lm")
    torch.testing.assert_close(loaded["model"]["w"], state["w"])
    assert loaded["format_version"] == FORMAT_VERSION
    with pytest.raises(
        UserError, match="is a char_lm checkpoint, but this command needs a captioner"
    ):
        load_checkpoint(path, task="captioner")


def test_checkpoint_errors(tmp_path):
    with pytest.raises(UserError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "none.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(UserError, match="not a checkpoint of this project"):
        load_checkpoint(foreign)
    truncated = tmp_path / "truncated.pt"
    save_checkpoint({"task": "char_lm", "big": torch.zeros(10000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(truncated)


def test_each_field_of_the_wrong_kind_is_refused_with_its_reason(tmp_path):
    """A file that reads but whose fields are not a checkpoint's: each refused in one line
    naming the field; integer weights are no NaN check's business. A folder is told apart."""
    good = {
        "task": "char_lm",
        "config": {},
        "vocab": ["a", "b"],
        "model": {"w": torch.zeros(2), "steps": torch.zeros(2, dtype=torch.long)},
    }
    cases = [
        ({"format_version": 0}, "damaged format_version (0)"),
        ({"format_version": True}, "damaged format_version (True)"),
        ({"format_version": "2"}, "damaged format_version ('2')"),
        ({"task": None}, "unknown task None"),
        ({"vocab": ["a", "\udcff"]}, "has a damaged 'vocab' (it must be a list of valid strings)"),
        ({"vocab": "ab"}, "has a damaged 'vocab'"),
        ({"config": None}, "has a damaged 'config' (it must be a dict)"),
        ({"model": {0: torch.zeros(2)}}, "has a damaged 'model' (it must be a dict of tensors)"),
        ({"model": {"w": torch.tensor([0.0, math.inf])}}, "non-finite weights (NaN or inf in 'w')"),
    ]
    path = tmp_path / "c.pt"
    save_checkpoint(good, path)
    assert load_checkpoint(path, task="char_lm")["vocab"] == ["a", "b"]
    for fields, message in cases:
        save_checkpoint({**good, **fields}, path)
        with pytest.raises(UserError, match=re.escape(message)):
            load_checkpoint(path)
    for key in ("config", "vocab", "model"):
        save_checkpoint({k: v for k, v in good.items() if k != key}, path)
        with pytest.raises(UserError, match=f"c.pt lacks '{key}'"):
            load_checkpoint(path)
    save_checkpoint({k: v for k, v in good.items() if k != "task"}, path)
    with pytest.raises(UserError, match="not a checkpoint of this project"):
        load_checkpoint(path)
    with pytest.raises(UserError, match="is a folder; pass a .pt file such as"):
        load_checkpoint(tmp_path)


def test_first_difference_and_state_dict_checks():
    """The first id two vocabularies differ at (an entry one lacks counts); a state dict with
    one tensor too many, or a tensor of another shape with as many values, is named."""
    assert first_difference(["a", "b"], ["a", "b"]) is None
    assert first_difference(["a", "b"], ["a", "c"]) == 1
    assert first_difference(["a"], ["a", "b"]) == first_difference(["a", "b"], ["a"]) == 1
    assert first_difference([], ["a"]) == 0
    expected = {"w": torch.zeros(2, 3)}
    check_state_dict(expected, {"w": torch.ones(2, 3)}, "x.pt")
    with pytest.raises(UserError, match=r"has an unexpected 'v' \(0 missing, 1 unexpected\)"):
        check_state_dict(expected, {"w": torch.ones(2, 3), "v": torch.ones(1)}, "x.pt")
    with pytest.raises(UserError, match=r"'w' is \(3, 2\), its config needs \(2, 3\)"):
        check_state_dict(expected, {"w": torch.ones(3, 2)}, "x.pt")


def test_an_exported_copy_keeps_what_serving_reads(tmp_path):
    """Floating weights halved (or kept with half=False), integer ones untouched, the scores and
    history kept, the optimizer dropped, and the source named."""
    source = tmp_path / "best.pt"
    weights = {"w": torch.randn(3), "count": torch.tensor([7])}
    save_checkpoint(
        {
            "task": "char_lm", "config": {"train": {}}, "vocab": ["a"], "model": weights,
            "optimizer": {"state": {}}, "step": 5, "best_val_loss": 1.5, "best_step": 4,
            "history": [{"step": 4}],
        },
        source,
    )  # fmt: skip
    for half, dtype in ((True, torch.float16), (False, torch.float32)):
        exported = load_checkpoint(export_checkpoint(source, tmp_path / "demo.pt", half=half))
        assert exported["model"]["w"].dtype == dtype
        torch.testing.assert_close(exported["model"]["w"].float(), weights["w"].to(dtype).float())
        assert exported["model"]["count"].dtype == torch.long
        assert torch.equal(exported["model"]["count"], weights["count"])
        assert "optimizer" not in exported and exported["exported_from"] == str(source)
        for key in ("step", "best_val_loss", "best_step", "history"):
            assert exported[key] == load_checkpoint(source)[key], key


def test_resume_refuses_other_architecture(tmp_path):
    saved = {"model": {"cell": "lstm"}}
    with pytest.raises(UserError, match="model.cell is 'lstm' in the checkpoint but 'gru'"):
        check_same_architecture(saved, {"model": {"cell": "gru"}}, ["model.cell"], "x.pt")
    # a field the checkpoint lacks (an edited file) is no more the config's than another value
    with pytest.raises(UserError, match="model.layers is None in the checkpoint but 2"):
        check_same_architecture(saved, {"model": {"layers": 2}}, ["model.layers"], "x.pt")
    check_same_architecture(saved, {"model": {"cell": "lstm"}}, ["model.cell"], "x.pt")  # same


def test_top_k_and_top_p_never_leave_the_allowed_set():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 50, generator=generator) * 3
    top5 = torch.topk(logits, 5, dim=-1).indices
    for _ in range(20):
        ids = sample_next(logits, top_k=5, generator=generator)
        assert (top5 == ids[:, None]).any(dim=1).all()
    # top-p: the allowed set is the smallest prefix of the sorted distribution with mass >= p.
    probs = torch.softmax(logits, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    keep_count = (sorted_probs.cumsum(-1) < 0.6).sum(-1) + 1
    for _ in range(20):
        ids = sample_next(logits, top_p=0.6, generator=generator)
        rank = (order == ids[:, None]).float().argmax(-1)
        assert (rank < keep_count).all()
    filtered = filter_logits(logits, top_k=3, top_p=0.99)
    assert (torch.isfinite(filtered).sum(-1) <= 3).all()
    # exactly that prefix is kept, no more and no less
    prefix = torch.arange(50) < keep_count[:, None]
    assert torch.equal(
        torch.isfinite(filter_logits(logits, top_p=0.6)), prefix.scatter(1, order, prefix)
    )
    # a token whose more likely ones already hold exactly p is dropped: [.5, .25, .25] at p = .5
    halves = torch.tensor([[0.5, 0.25, 0.25]]).log()
    assert torch.isfinite(filter_logits(halves, top_p=0.5)).tolist() == [[True, False, False]]
    # a p that float32 rounds to 0 (it passes `0 < p`) keeps the most likely, as any small p does
    # (`sample --top-p 1e-46` dropped every token: torch.multinomial's traceback)
    for tiny in (1e-46, 5e-324, 1e-9):
        assert torch.equal(sample_next(logits, top_p=tiny), logits.argmax(-1))
    # top-k and top-p together: the nucleus of the top-k distribution
    both = filter_logits(logits, top_k=10, top_p=0.3)
    assert torch.equal(both, filter_logits(filter_logits(logits, top_k=10), top_p=0.3))
    assert (torch.isfinite(both).sum(-1) < 10).any()


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_top_k_and_top_p_match_the_transformers_warpers(temperature):
    """The same tokens as Hugging Face's warpers in their order (TemperatureLogitsWarper,
    TopKLogitsWarper, TopPLogitsWarper written out here): the nucleus of the temperature-scaled,
    top-k distribution, whose kept tokens then have the probabilities softmax(logits / T)
    renormalised over them."""
    logits = torch.randn(256, 40, generator=torch.Generator().manual_seed(3)) * 2
    for top_k, top_p in [(None, 0.9), (8, None), (8, 0.5), (None, 0.3)]:
        scaled = logits / temperature
        if top_k is not None:
            kth = torch.topk(scaled, top_k, dim=-1).values[..., -1:]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        if top_p is not None:
            ascending, order = torch.sort(scaled, descending=False)
            cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
            remove = cumulative <= (1 - top_p)
            remove[..., -1:] = False  # min_tokens_to_keep 1
            scaled = scaled.masked_fill(remove.scatter(1, order, remove), float("-inf"))
        got = filter_logits(logits, temperature, top_k, top_p)
        assert torch.equal(torch.isfinite(got), torch.isfinite(scaled)), (top_k, top_p)
        torch.testing.assert_close(got.softmax(-1), scaled.softmax(-1))


def test_sampling_is_seeded_and_greedy_is_argmax():
    logits = torch.randn(8, 30)
    a = sample_next(logits, temperature=0.8, generator=torch.Generator().manual_seed(5))
    b = sample_next(logits, temperature=0.8, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert torch.equal(sample_next(logits, greedy=True), logits.argmax(-1))


@pytest.mark.parametrize("temperature", [1e-30, 1e-40, 1e-300])
def test_a_tiny_temperature_is_greedy_and_never_nan(temperature):
    """Dividing logits by 1e-40 overflows float32 (inf - inf = NaN in softmax, and multinomial
    refused it); the logits are shifted first, so the limit is the greedy choice."""
    logits = torch.randn(16, 65, generator=torch.Generator().manual_seed(0)) * 4
    probs = torch.softmax(filter_logits(logits, temperature, top_k=5, top_p=0.9), dim=-1)
    assert torch.equal(probs, F.one_hot(logits.argmax(-1), 65).float())
    ids = sample_next(logits, temperature=temperature, generator=torch.Generator().manual_seed(1))
    assert torch.equal(ids, logits.argmax(-1))
    close = torch.tensor([[0.0, -1e-4, -2e-4]])  # greedy however close the runner-up
    assert filter_logits(close, temperature).softmax(-1).tolist() == [[1.0, 0.0, 0.0]]


@pytest.mark.parametrize("temperature", [0.0, -1.0, math.nan])
def test_filter_logits_refuses_a_temperature_that_is_not_positive(temperature):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        filter_logits(torch.zeros(1, 3), temperature)


def test_filters_that_are_off_keep_every_token():
    """top_k 0 (the CLI's "off") or at least the vocabulary, and top_p 1, filter nothing: only the
    shift and the temperature apply. With p = 1 every token is needed to reach the mass, even
    where float32's running sum reaches 1.0 before the unlikely tail does."""
    peaked = torch.tensor([[0.0, -20.0, -20.0, -30.0], [1.0, 2.0, 3.0, 4.0]])
    expected = (peaked - peaked.amax(dim=-1, keepdim=True)) / 0.5
    for top_k, top_p in [(0, None), (4, None), (9, None), (None, 1.0), (0, 1.0)]:
        got = filter_logits(peaked, 0.5, top_k, top_p)
        assert torch.equal(got, expected), (top_k, top_p)


def test_filter_logits_works_in_float32_whatever_the_logits_dtype():
    """bf16 logits (a model under autocast) are filtered as their float32 values: a nucleus summed
    in bf16 keeps other tokens."""
    logits = (torch.randn(256, 40, generator=torch.Generator().manual_seed(3)) * 2).bfloat16()
    for top_k, top_p in [(None, 0.9), (8, 0.5)]:
        got = filter_logits(logits, 0.7, top_k, top_p)
        assert got.dtype == torch.float32
        assert torch.equal(got, filter_logits(logits.float(), 0.7, top_k, top_p))


def test_sampling_with_the_defaults_draws_from_the_softmax():
    """No temperature, top-k or top-p given: the draw is torch.multinomial's over softmax(logits),
    with the same generator."""
    logits = torch.randn(64, 30, generator=torch.Generator().manual_seed(0)) * 3
    ids = sample_next(logits, generator=torch.Generator().manual_seed(1))
    reference = torch.multinomial(
        torch.softmax(logits, dim=-1), 1, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(ids, reference.squeeze(-1))


def test_draw_takes_a_row_with_any_value_not_finite_from_a_uniform_stand_in():
    """One NaN is enough for torch.multinomial to raise: such a row is drawn uniformly, and the
    finite rows keep their own distributions."""
    probs = torch.tensor([[0.0, 1.0, 0.0], [float("nan"), 1.0, 0.0], [0.5, float("inf"), 0.5]])
    drawn = draw(probs.repeat(100, 1), torch.Generator().manual_seed(0)).view(100, 3)
    assert (drawn[:, 0] == 1).all()
    assert set(drawn[:, 1].tolist()) == {0, 1, 2}
    assert set(drawn[:, 2].tolist()) == {0, 1, 2}


@pytest.mark.parametrize("name", ["meta", "mps", "xla", "cuda:7", "gpu"])
def test_pick_device_takes_only_the_devices_the_project_runs_on(name):
    with pytest.raises(UserError, match=rf"'{name}'"):
        pick_device(name)


def test_pick_device_takes_the_gpus_there_are(monkeypatch):
    """On a machine with two GPUs: cuda:0 and cuda:1, not cuda:2 (numbered from 0)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("cuda:1") == torch.device("cuda:1") and pick_device("auto").type == "cuda"
    with pytest.raises(UserError, match="'cuda:2': this machine has 2 CUDA device"):
        pick_device("cuda:2")


def test_warmup_cosine_schedule():
    kw = dict(warmup_steps=10, total_steps=110, min_ratio=0.1)
    assert warmup_cosine(0, **kw) == pytest.approx(0.1)
    assert warmup_cosine(9, **kw) == pytest.approx(1.0)
    assert warmup_cosine(60, **kw) == pytest.approx(0.55)
    assert warmup_cosine(110, **kw) == pytest.approx(0.1)
    assert warmup_cosine(500, **kw) == pytest.approx(0.1)


def test_atomic_write_removes_only_the_temporary_files_of_gone_writers(tmp_path):
    """A writer killed mid-write leaves `.NAME.HOST-PID.*.tmp`; the next write removes it once that
    process is gone, but never the file of a live writer of the same file (a torchrun rank)."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    dead = tmp_path / f".meta.json.{HOST}-{gone}.abc123.tmp"
    live = tmp_path / f".meta.json.{HOST}-{os.getpid()}.def456.tmp"
    foreign_new = tmp_path / ".meta.json.other-host.example-4242.ghi789.tmp"
    foreign_old = tmp_path / ".meta.json.other-host.example-4243.jkl012.tmp"
    for path in (dead, live, foreign_new, foreign_old):
        path.write_text("half")
    old = time.time() - FOREIGN_TEMP_AGE_S - 60
    os.utime(foreign_old, (old, old))
    atomic_write_text(tmp_path / "meta.json", "{}")
    assert (tmp_path / "meta.json").read_text() == "{}"
    assert not dead.exists() and not foreign_old.exists()
    assert live.exists() and foreign_new.exists()


CLIS = [
    "captioner.caption",
    "captioner.check_data",
    "captioner.compare",
    "captioner.evaluate",
    "captioner.scenes",
    "captioner.train",
    "char_lm.evaluate",
    "char_lm.sample",
    "char_lm.train",
    "recurrent.plot",
]


@pytest.mark.parametrize("module", CLIS)
def test_a_bad_flag_is_one_line_naming_it(module, capsys):
    """argparse's mistakes (an unknown flag, a missing argument, a value of the wrong type) are one
    line like any other mistake, exit status 2: they came after argparse's usage block."""
    main = importlib.import_module(module).main
    mistakes = [(["--no-such-flag"], "argument")]  # unknown, or the required ones missing first
    if module == "char_lm.sample":
        mistakes.append((["--checkpoint", "x.pt", "--length", "abc"], "invalid int value: 'abc'"))
        mistakes.append((["--checkpoint", "x.pt", "--no-such-flag"], "unrecognized arguments"))
    if module.endswith(".train"):
        mistakes.append((["--config", "x.yaml", "--resume", "later"], "invalid choice: 'later'"))
        # going on with the run in --out-dir and replacing it: --overwrite was ignored
        both = "argument --overwrite: not allowed with argument --resume"
        mistakes.append((["--config", "x.yaml", "--resume", "auto", "--overwrite"], both))
    for argv, named in mistakes:
        status = run_cli(main, argv)
        err = capsys.readouterr().err
        assert status == 2 and err.startswith(f"error: python -m {module}: "), err
        assert err.count("\n") == 1 and named in err and f"`python -m {module} --help`" in err


def test_config_is_required_unless_another_option_stands_in_for_it():
    """Without --config, a command would run on the config dataclass's defaults, which no one
    wrote down: --config is required, or (check_data) one of it and --checkpoint."""
    alone = errors.ArgumentParser(prog="train")
    config_module.add_config_arguments(alone, "x.yaml")
    with pytest.raises(UserError, match="the following arguments are required: --config;"):
        alone.parse_args(["--set", "train.lr=1"])
    assert alone.parse_args(["--config", "x.yaml", "--set", "a=1"]).overrides == ["a=1"]
    parser = errors.ArgumentParser(prog="check")
    either = parser.add_mutually_exclusive_group(required=True)
    config_module.add_config_arguments(parser, "x.yaml", either=either)
    either.add_argument("--checkpoint")
    with pytest.raises(UserError, match="one of the arguments --config --checkpoint is required"):
        parser.parse_args(["--set", "train.lr=1"])
    assert parser.parse_args(["--checkpoint", "best.pt"]).config is None


@pytest.mark.parametrize(
    "raised, status, said",
    [
        (UserError("a bad value\n  on two  lines"), 2, "error: a bad value on two lines\n"),
        # Ctrl-C outside a training loop: as a SIGTERM there, what is kept
        (KeyboardInterrupt(), 130, f"stopped: interrupted; {STOPPED}\n"),
        (BrokenPipeError(), 0, ""),  # `char_lm.sample ... | head`: the reader had enough
        # Python's own refusal (a list, a decoded file too big), outside a training run
        (MemoryError(), 2, f"error: the machine ran out of memory; {errors.MEMORY}\n"),
    ],
)
def test_run_cli_turns_each_ending_into_its_status_and_one_line(raised, status, said, capsys):
    def main(argv):
        raise raised

    assert run_cli(main, []) == status
    assert capsys.readouterr().err == said


def test_ctrl_c_in_a_trainer_says_what_its_sigterm_says(capsys) -> None:
    def main(argv) -> None:
        raise KeyboardInterrupt

    assert run_cli(main, [], stopped=TRAINING_STOPPED) == 130
    said = capsys.readouterr().err
    assert said == f"stopped: interrupted; {TRAINING_STOPPED}\n"


def test_an_output_that_cannot_hold_a_character_is_one_line_saying_how_to_run(monkeypatch, capsys):
    """`sample` of a Chinese model into a latin-1 (or cp1252) terminal or file: one line naming
    the stream, its encoding and the way out, not a UnicodeEncodeError traceback. A lone
    surrogate (a name not shown through shown_name) stays a bug's traceback, as does a file's."""
    latin = io.TextIOWrapper(io.BytesIO(), encoding="latin-1")
    monkeypatch.setattr(sys, "stdout", latin)
    assert run_cli(lambda argv: (print("to"), print("\u543e")), []) == EXIT_USER_ERROR
    assert capsys.readouterr().err == (
        "error: the standard output is latin-1 text, which cannot hold U+543E; set "
        "PYTHONIOENCODING=utf-8 (or PYTHONUTF8=1) and run again\n"
    )
    assert latin.buffer.getvalue() == b"to\n"  # what came before is written
    for raised in ("\udcff".encode, lambda: "\u00e9".encode("ascii")):  # both streams hold é
        with pytest.raises(UnicodeEncodeError):
            run_cli(lambda argv, raised=raised: raised(), [])


@pytest.mark.parametrize(
    "key,hint",
    [
        ("train.max_step", "did you mean 'train.max_steps'? known keys: train.lr, train.max_steps"),
        ("train.zzz", "(known keys: train.lr, train.max_steps"),  # nothing close: no guess
        ("trian.lr", "('trian' is not a config section; did you mean 'train'?)"),
        ("zzz.lr", "('zzz' is not a config section)"),
    ],
)
def test_an_unknown_key_names_the_nearest_known_one(tmp_path, key, hint):
    """A typo in --set, in a config file or in a saved config gets the nearest key, compared
    within its section (every train.* key would be near "train.zzz" otherwise)."""
    for path in (None, write(tmp_path, "train:\n  lr: 0.1\n")):  # --set, with a file or not
        with pytest.raises(UserError) as caught:
            load_config(Config, path, [f"{key}=1"])
        assert hint in str(caught.value)
    section, name = key.split(".")
    in_file = write(tmp_path, f"{section}:\n  {name}: 1\n")
    if "section" in hint:  # a file or a saved config names the unknown section itself
        close = "did you mean 'train'? " if section == "trian" else ""
        hint = f"unknown config key {section!r} ({close}known keys: model, train)"
    for load in (
        lambda: load_config(Config, in_file),
        lambda: from_dict(Config, {section: {name: 1}}),
    ):
        with pytest.raises(UserError) as caught:
            load()
        assert hint in str(caught.value)


def test_a_checkpoints_config_with_a_key_this_version_lacks_is_named():
    """A config read back from a checkpoint (`from_dict`) with a key no field has (an edited file,
    or one from another version): one line naming the key, not a TypeError."""
    with pytest.raises(UserError, match=r"unknown config key 'model\.foo' \(known keys: "):
        from_dict(CaptionerConfig, {"model": {"foo": 1}})


def test_the_default_run_folder_is_named_after_the_task_and_the_config():
    assert run_dir("captioner", "configs/captioner/tiny.yaml", None) == Path("runs/captioner/tiny")
    assert run_dir("char_lm", "configs/char_lm/ship.yaml", "elsewhere") == Path("elsewhere")


@pytest.mark.parametrize(
    "rank, local_rank, formed, raised, said",
    [
        # rank 0 says everything, as a command outside torchrun does
        ("0", "0", True, RunStopped("SIGTERM", 143), "stopped: SIGTERM\n"),
        ("0", "0", False, UserError("a bad flag"), "error: a bad flag\n"),
        # rank 0's machine: nothing of a stop every rank meets (rank 0 says it), nor of an error
        # met before the job formed (the same arguments everywhere); their own errors with the rank
        ("1", "1", True, RunStopped("SIGTERM", 143), ""),
        ("1", "1", False, UserError("a bad flag"), ""),
        ("3", "3", True, UserError("a bad image"), "[rank 3] error: a bad image\n"),
        # another machine's first process says both to that machine's output (a config file
        # missing there alone was said nowhere), the others on it neither
        ("2", "0", False, UserError("a missing config"), "[rank 2] error: a missing config\n"),
        ("2", "0", True, RunStopped("SIGTERM", 143), "[rank 2] stopped: SIGTERM\n"),
        ("3", "1", False, UserError("a missing config"), ""),
        ("3", "1", True, UserError("a bad image"), "[rank 3] error: a bad image\n"),
    ],
)
def test_under_torchrun_a_job_wide_line_is_said_once_per_machine(
    rank, local_rank, formed, raised, said, monkeypatch, tmp_path, capsys
):
    """Before the job formed, the machine's first process notes that it has said its line (a file
    beside its torchrun error file's folder); the others wait for that note (here already
    written) before exiting."""
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    attempt = tmp_path / "attempt_0"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(attempt / local_rank / "error.json"))
    attempt.mkdir()
    if local_rank != "0":
        (attempt / "crnn-said").touch()  # the first process has said its line
    monkeypatch.setattr(errors, "_formed_job", lambda: object() if formed else None)

    def main(argv):
        raise raised

    status = 143 if isinstance(raised, RunStopped) else 2
    assert run_cli(main, []) == status
    assert capsys.readouterr().err == said
    if local_rank == "0":
        assert (attempt / "crnn-said").exists() == (not formed)


def test_without_torchruns_folders_every_process_says_its_line(monkeypatch, capsys):
    """Launched otherwise (RANK and LOCAL_RANK set, no torchrun error file): nothing to wait for,
    so a process that would leave an error to its machine's first process says it itself."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.delenv("TORCHELASTIC_ERROR_FILE", raising=False)
    monkeypatch.setattr(errors, "_formed_job", lambda: None)

    def main(argv):
        raise UserError("a bad flag")

    assert run_cli(main, []) == 2
    assert capsys.readouterr().err == "[rank 1] error: a bad flag\n"


@pytest.mark.parametrize(
    "text",
    [
        "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error "
        "[127.0.0.1]:33163: Connection reset by peer. This is typically caused by a remote worker",
        # a gradient exchange of DistributedDataParallel
        "Got the following error when running the callback: RuntimeError: [/__w/pytorch/pytorch/"
        "third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:33163: "
        "Connection reset by peer. This is typically caused by a remote worker crashing.",
    ],
)
def test_a_lost_peer_is_one_line_with_the_transports_reason(text, monkeypatch, capsys):
    import torch.distributed

    monkeypatch.setattr(errors, "_formed_job", lambda: torch.distributed)

    def main(argv):
        raise RuntimeError(text)

    assert run_cli(main, []) == errors.EXIT_LOST_PEER
    assert capsys.readouterr().err == (
        "error: lost contact with another process of this torchrun job (Read error "
        "[127.0.0.1]:33163: Connection reset by peer); torchrun's report names the process that "
        "failed first\n"
    )


def test_a_saved_config_gets_the_keys_it_lacks_at_their_defaults():
    defaults = to_dict(Config())
    saved = {"model": {"cell": "gru"}, "train": {"lr": 0.5}, "extra": {"kept": 1}}
    filled = with_defaults(saved, defaults)
    assert filled["model"] == {**defaults["model"], "cell": "gru"}  # its own values win
    assert filled["train"] == {"max_steps": 10, "lr": 0.5} and filled["extra"] == {"kept": 1}
    assert with_defaults({}, defaults) == defaults
    assert saved == {"model": {"cell": "gru"}, "train": {"lr": 0.5}, "extra": {"kept": 1}}


class ParentOfTheWorker(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> int:
        return os.getppid()


def test_loader_workers_are_this_processs_children_whatever_the_default_start_method():
    """A scheduler's SIGTERM to the process group is left to the main process, which ends its
    workers (`loader_worker_init`): they must be its children. Python 3.14's default on Linux,
    the forkserver, made them the children of a process that the group's SIGTERM ended too."""
    previous = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method("forkserver", force=True)
    try:
        loader = torch.utils.data.DataLoader(ParentOfTheWorker(), **loader_workers(2))
        parents = {int(parent) for parent in loader}
    finally:
        multiprocessing.set_start_method(previous, force=True)
    assert parents == {os.getpid()}
    assert "multiprocessing_context" not in loader_workers(0)  # torch refuses it without workers


# torch's own words for an allocation that failed (c10/cuda/CUDACachingAllocator.cpp, from
# torch 2.1 and before it; the MPS allocator's; a wrapped one from a DataLoader worker)
GPU_NOW = (
    "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.19 GiB of "
    "which 3.12 GiB is free. Including non-PyTorch memory, this process has 76.06 GiB memory in "
    "use. Of the allocated memory 75.50 GiB is allocated by PyTorch, and 68.21 MiB is reserved by "
    "PyTorch but unallocated. If reserved but unallocated memory is large try setting "
    "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation."
)
GPU_THEN = (
    "CUDA out of memory. Tried to allocate 36.00 MiB (GPU 0; 7.93 GiB total capacity; 130.35 MiB "
    "already allocated; 47.06 MiB free; 188.00 MiB reserved in total by PyTorch) If reserved "
    "memory is >> allocated memory try setting max_split_size_mb to avoid fragmentation."
)
MPS = (
    "MPS backend out of memory (MPS allocated: 17.79 GB, other allocations: 1.27 GB, max allowed: "
    "18.13 GB). Tried to allocate 256.00 MiB on private pool."
)


@pytest.mark.parametrize(
    ("err", "said"),
    [
        (torch.cuda.OutOfMemoryError(GPU_NOW),
         "the GPU ran out of memory (it asked for 20.00 GiB more; 3.12 GiB of its 79.19 GiB was free)"),
        (RuntimeError(GPU_THEN),  # torch before 2.1 raised a RuntimeError
         "the GPU ran out of memory (it asked for 36.00 MiB more; 47.06 MiB of its 7.93 GiB was free)"),
        (RuntimeError(MPS), "the GPU (MPS) ran out of memory (it asked for 256.00 MiB more)"),
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate more than 1EB memory."),
         "the GPU ran out of memory"),
        (RuntimeError(f"Caught OutOfMemoryError in DataLoader worker process 0.\nOriginal "
                      f"Traceback (most recent call last):\n...\ntorch.OutOfMemoryError: {GPU_NOW}"),
         "the GPU ran out of memory (it asked for 20.00 GiB more; 3.12 GiB of its 79.19 GiB was free)"),
        (MemoryError(), "the machine ran out of memory"),
        # CUDA's own, outside torch's allocator: a context, cuBLAS's handle, cuDNN's workspace
        (RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously "
                      "reported at some other API call"), "the GPU ran out of memory"),
        (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
         "the GPU ran out of memory"),
        (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), "the GPU ran out of memory"),
        (RuntimeError("CUDA error: an illegal memory access was encountered"), None),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 2x2)"), None),
        (ValueError("CUDA out of memory"), None),  # not torch's
        (OSError(12, "Cannot allocate memory"), None),  # a system call's: its own message says it
    ],
)  # fmt: skip
def test_out_of_memory_reads_torchs_words_for_what_ran_out(err, said):
    assert errors.out_of_memory(err) == said


@pytest.mark.parametrize(("size", "said"), [(512, "512 bytes"), (3 << 20, "3.00 MiB"),
                                            (5 << 40, "5.00 TiB"), (7 << 50, "7.00 PiB"),
                                            (1536, "1.50 KiB"), (1023 << 30, "1023.00 GiB")])  # fmt: skip
def test_the_cpu_allocators_refusal_is_read_from_its_own_error(size, said):
    """A real refusal of torch's CPU allocator (1 PiB exceeds any machine's memory and swap;
    other sizes are read from the same words)."""
    with pytest.raises(RuntimeError) as refused:
        torch.empty(1 << 50, dtype=torch.uint8)
    text = str(refused.value).replace(str(1 << 50), str(size))
    assert errors.out_of_memory(RuntimeError(text)) == (
        f"the machine ran out of memory (it asked for {said} more)"
    )


def test_a_refusal_in_a_dataloader_worker_is_read_through_torchs_wrapping():
    loader = torch.utils.data.DataLoader(RefusedItems(), batch_size=None, **loader_workers(1))
    with pytest.raises(RuntimeError) as in_worker:
        next(iter(loader))
    assert errors.out_of_memory(in_worker.value) == (
        "the machine ran out of memory (it asked for 1.00 PiB more)"
    )


class RefusedItems(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.empty(1 << 50, dtype=torch.uint8)


def test_an_io_error_says_the_output_has_gone_only_from_a_terminal(tmp_path):
    """EIO writing to a terminal is a closed terminal (a lost ssh connection), whose writes are
    dropped; EIO writing to a file is a failing disk, which must not be hidden."""
    eio = OSError(errno.EIO, "Input/output error")
    with open(os.devnull, "w") as device, (tmp_path / "log.txt").open("w") as file:
        assert errors.output_gone(eio, device)  # a character device, as a terminal is
        assert not errors.output_gone(eio, file)
        assert errors.output_gone(BrokenPipeError(errno.EPIPE, "Broken pipe"), file)
        assert not errors.output_gone(OSError(errno.ENOSPC, "No space left on device"), device)
    assert not errors.output_gone(eio, io.StringIO())  # no descriptor


@pytest.mark.parametrize(
    ("failure", "dropped"),
    [(BrokenPipeError(errno.EPIPE, "Broken pipe"), True),  # `train ... 2>&1 | head`
     (OSError(errno.ENOSPC, "No space left on device"), False)],  # a log on a full disk
)  # fmt: skip
def test_a_line_whose_stderr_has_gone_is_dropped_and_any_other_failure_raised(
    failure, dropped, monkeypatch
):
    class FailingStderr(io.StringIO):
        def write(self, text: str) -> int:
            raise failure

    monkeypatch.setattr(sys, "stderr", FailingStderr())
    with contextlib.nullcontext() if dropped else pytest.raises(OSError) as raised:
        errors.say("stopped: SIGTERM; no file is left half-written")
    if not dropped:
        assert raised.value is failure


class SlowWorkerPids(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 3

    def __getitem__(self, index: int) -> int:
        if index:
            time.sleep(0.5)  # the worker is busy with it when the hang-up comes
        return os.getpid()


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="a hang-up is POSIX's")
def test_loader_workers_leave_a_hang_up_to_the_main_process():
    """A closed terminal's SIGHUP goes to the whole foreground process group (the shell sends it
    to each job's group): it killed the workers, and the main process failed as it next waited
    for a batch ("DataLoader worker ... is killed by signal: Hangup"), a traceback and its last
    steps unsaved. The main process stops on it, saved, and then ends its workers."""
    items = iter(
        torch.utils.data.DataLoader(SlowWorkerPids(), batch_size=None, **loader_workers(1))
    )
    worker = int(next(items))
    os.kill(worker, signal.SIGHUP)
    assert [int(pid) for pid in items] == [worker, worker]


@pytest.mark.parametrize(
    "annotation, name",
    [
        (str | None, "str | None"),
        (typing.Optional[int], "int | None"),  # noqa: UP045 (typing.Union, not types.UnionType)
        (int | str, "int | str"),
    ],
)
def test_a_union_is_named_alike_on_every_python(annotation, name):
    """Python 3.14 names every union "Union" (`__name__`); the messages said "expected Union"."""
    assert config_module._type_name(annotation) == name


@pytest.mark.parametrize("reader", ["image", "checkpoint"])
def test_a_stop_inside_a_files_reader_is_a_stop_not_a_bad_file(reader, tmp_path, monkeypatch):
    """The SIGTERM handler raises RunStopped wherever the command is. The readers turn whatever
    Pillow or torch raises on a bad file into one line (`except Exception`): a stop raised while
    they read must pass through them as the stop it is (it was taken for an undecodable image,
    the image skipped and the job gone on to its end)."""
    import PIL.Image

    from captioner.data.images import load_image
    from recurrent.checkpoint import load_checkpoint, save_checkpoint

    def stopped(*args, **kwargs):
        raise RunStopped("SIGTERM", 143)

    if reader == "image":
        path = tmp_path / "a.png"
        PIL.Image.new("RGB", (8, 8)).save(path)
        monkeypatch.setattr(PIL.Image, "open", stopped)
        with pytest.raises(RunStopped):
            load_image(path)
    else:
        path = tmp_path / "a.pt"
        save_checkpoint({"task": "char_lm", "config": {}, "vocab": [], "model": {}}, path)
        monkeypatch.setattr(torch, "load", stopped)
        with pytest.raises(RunStopped):
            load_checkpoint(path)


@pytest.mark.parametrize("reader", ["image", "checkpoint"])
def test_memory_that_runs_out_inside_a_files_reader_is_not_a_bad_file(
    reader, tmp_path, monkeypatch
):
    """A MemoryError or torch's allocator refusing while an image decodes or a checkpoint loads
    is the machine's: it was said to be an undecodable image (skipped, the job going on) or a
    damaged checkpoint (the user sent to mend a file that was fine)."""
    import PIL.Image

    from captioner.data.images import load_image
    from recurrent.checkpoint import load_checkpoint, save_checkpoint

    def refused(*args, **kwargs):
        torch.empty(1 << 50, dtype=torch.uint8)

    if reader == "image":
        path = tmp_path / "a.png"
        PIL.Image.new("RGB", (8, 8)).save(path)
        monkeypatch.setattr(PIL.Image, "open", refused)
        with pytest.raises(RuntimeError, match="can't allocate memory"):
            load_image(path)
    else:
        path = tmp_path / "a.pt"
        save_checkpoint({"task": "char_lm", "config": {}, "vocab": [], "model": {}}, path)
        monkeypatch.setattr(torch, "load", refused)
        with pytest.raises(RuntimeError, match="can't allocate memory"):
            load_checkpoint(path)


@pytest.mark.parametrize(
    ("exit_code", "name"), [(143, "SIGTERM"), (130, "SIGINT"), (3, None), (128, None), (300, None)]
)
def test_a_stop_names_the_signal_its_exit_status_stands_for(exit_code, name):
    """`caption --csv` says which signal stopped it; the status 128 + N of a signal's stop says
    it, not the front of the stop's message."""
    assert RunStopped("SIGTERM; any message", exit_code).signal_name == name


def test_an_error_stream_that_cannot_hold_a_character_is_named_as_the_standard_error(
    monkeypatch, capsys
):
    """stderr in latin-1, stdout in UTF-8: the line names the standard error (kills: only stdout
    looked at, which let the UnicodeEncodeError through as a traceback)."""
    latin = io.TextIOWrapper(io.BytesIO(), encoding="latin-1", write_through=True)
    monkeypatch.setattr(sys, "stderr", latin)
    assert run_cli(lambda argv: print("\u543e", file=sys.stderr), []) == EXIT_USER_ERROR
    assert latin.buffer.getvalue().decode("latin-1") == (
        "error: the standard error is latin-1 text, which cannot hold U+543E; set "
        "PYTHONIOENCODING=utf-8 (or PYTHONUTF8=1) and run again\n"
    )


@pytest.mark.parametrize("encoding", ["iso-8859-1", "ISO8859-1", "latin1"])
def test_a_stream_encoding_spelled_otherwise_than_its_codec_is_still_recognised(
    encoding, monkeypatch, capsys
):
    """The stream says 'iso-8859-1', its codec's error 'latin-1': the same codec, named as the
    stream names it."""
    stream = io.TextIOWrapper(io.BytesIO(), encoding=encoding)
    monkeypatch.setattr(sys, "stdout", stream)
    assert run_cli(lambda argv: print("\u543e"), []) == EXIT_USER_ERROR
    assert capsys.readouterr().err.startswith(
        f"error: the standard output is {encoding} text, which cannot hold U+543E;"
    )


def test_a_stream_whose_encoding_is_no_name_leaves_the_error_as_it_was(monkeypatch):
    """A replaced stdout whose `encoding` is not a str: no codec to look up, the encoding error
    stays the bug's (kills: TypeError no longer suppressed, which raised a TypeError instead)."""
    monkeypatch.setattr(sys, "stdout", types.SimpleNamespace(encoding=7, flush=lambda: None))
    with pytest.raises(UnicodeEncodeError):
        run_cli(lambda argv: "\u543e".encode("ascii"), [])


def test_a_cp1252_output_that_cannot_hold_a_character_is_one_line(monkeypatch, capsys):
    """A Windows cp1252 terminal or file: the codec's error calls its encoding 'charmap' (as
    cp437's, koi8-r's and others do), which was compared with the stream's name and let through
    as a traceback (found by the mutation audit)."""
    stream = io.TextIOWrapper(io.BytesIO(), encoding="cp1252")
    monkeypatch.setattr(sys, "stdout", stream)
    assert run_cli(lambda argv: print("\u543e"), []) == EXIT_USER_ERROR
    assert "the standard output is cp1252 text, which cannot hold U+543E" in capsys.readouterr().err


def test_shown_name_takes_a_lone_surrogate_no_file_name_holds():
    """'\\ud800' (as a JSON config's escape gives it) is no surrogateescape byte: os.fsencode
    refuses it, shown_name shows U+FFFD all the same (kills: the UnicodeEncodeError branch
    dropped, or its surrogatepass turned replace, which gave '?')."""
    # its three UTF-8 bytes (surrogatepass), each shown as U+FFFD
    assert shown_name("texts/\ud800name.txt") == "texts/" + "\ufffd" * 3 + "name.txt"
    assert shown_name("texts/bad\udcffname.txt") == "texts/bad\ufffdname.txt"


class _FailingOnce(io.StringIO):
    """A stream on the descriptor of ``file`` whose first write fails with ``error``."""

    def __init__(self, file, error: OSError) -> None:
        super().__init__()
        self.file, self.error = file, error

    def write(self, text: str) -> int:
        error, self.error = self.error, None
        if error is not None:
            raise error
        return super().write(text)

    def fileno(self) -> int:
        return self.file.fileno()


def test_a_commands_streams_drop_a_closed_terminal_but_not_a_failing_disk_or_a_reader_gone(
    tmp_path,
):
    """`run_cli` puts its guard around both standard streams while the command runs: EIO from a
    terminal (a character device, as os.devnull is) is a closed terminal, whose writes are
    dropped, the command going on; EIO from a file is a failing disk and a broken pipe a reader
    gone, which still reach the command (the disk's as one line naming the stream)."""
    seen = {}

    def main(argv) -> None:
        with open(os.devnull, "w") as terminal, (tmp_path / "log.txt").open("w") as disk:
            for name, stream, error in [
                ("terminal", terminal, OSError(errno.EIO, "Input/output error")),
                ("disk", disk, OSError(errno.EIO, "Input/output error")),
                ("pipe", terminal, BrokenPipeError(errno.EPIPE, "Broken pipe")),
            ]:
                failing = _FailingOnce(stream, error)
                guarded = errors._StandardStream(failing, "the standard output")
                try:
                    seen[name] = guarded.write("a line\n")
                except OSError as err:
                    seen[name] = err.errno
                except UserError as err:
                    seen[name] = str(err)
            seen["guarded"] = isinstance(sys.stdout, errors._StandardStream)
            seen["stderr"] = isinstance(sys.stderr, errors._StandardStream)

    before = sys.stdout, sys.stderr
    assert run_cli(main, []) == 0
    assert (sys.stdout, sys.stderr) == before  # given back as they were
    assert seen == {
        "terminal": len("a line\n"),
        "disk": "cannot write to the standard output (Input/output error); check what it is "
        "redirected to",
        "pipe": errno.EPIPE,
        "guarded": True,
        "stderr": True,
    }


def test_a_standard_output_that_fails_otherwise_or_is_closed_is_one_line(tmp_path):
    """A write to a descriptor that is closed (EBADF) or will not block (EAGAIN) names the
    stream in one line; a command started with its standard output closed (``>&-``, which
    Python leaves as None) fails at its first write in one line, where it raised AttributeError
    with a traceback; one started with its standard error closed ends with its own status. The guard's other ways of writing drop a closed terminal too, and it can
    be copied."""
    with (tmp_path / "log.txt").open("w") as file, open(os.devnull, "w") as terminal:
        failing = _FailingOnce(file, OSError(errno.EBADF, "Bad file descriptor"))
        guarded = errors._StandardStream(failing, "the standard output")
        with pytest.raises(UserError, match=r"^cannot write to the standard output \(Bad file"):
            guarded.write("a line\n")
        eio = OSError(errno.EIO, "Input/output error")
        dropped = errors._StandardStream(_FailingOnce(terminal, eio), "the standard output")
        dropped.writelines(["a line\n", "another\n"])  # a closed terminal's: dropped
        assert copy.copy(dropped)._name == "the standard output"
    code = "import sys; from recurrent.errors import run_cli; sys.exit(run_cli(print, ['a']))"
    ended = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[1],
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        preexec_fn=lambda: os.close(1),
    )
    assert (ended.returncode, ended.stderr) == (
        2,
        "error: cannot write to the standard output (it is closed: started with >&-); send it to "
        "a file or to /dev/null instead\n",
    )
    # its standard error closed (2>&-): the mistake's line goes nowhere, its status stays 2 (an
    # AttributeError made it 1)
    code = (
        "import sys; from recurrent.errors import UserError, run_cli\n"
        "def main(argv): raise UserError('a mistake')\n"
        "sys.exit(run_cli(main, []))"
    )
    ended = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        timeout=60,
        preexec_fn=lambda: os.close(2),
    )
    assert (ended.returncode, ended.stdout) == (2, b"")


class _FlushFailingOnce(_FailingOnce):
    """`_FailingOnce` whose first flush fails instead of its first write."""

    def write(self, text: str) -> int:
        return io.StringIO.write(self, text)

    def flush(self) -> None:
        error, self.error = self.error, None
        if error is not None:
            raise error


def test_a_flush_that_fails_first_is_guarded_as_a_write_and_a_named_file_passes_through(tmp_path):
    """A partial line (`print(..., end="")`) stays in a line-buffered stream's buffer, so its
    flush is the first write to fail: from a closed terminal it is dropped as a write's failure
    is, on a descriptor that is closed it is one line naming the stream. An error that names its
    own file reaches run_cli as it was raised, for run_cli's line to name that file."""
    eio = OSError(errno.EIO, "Input/output error")
    with open(os.devnull, "w") as terminal, (tmp_path / "log.txt").open("w") as file:
        errors._StandardStream(_FlushFailingOnce(terminal, eio), "the standard output").flush()
        ebadf = OSError(errno.EBADF, "Bad file descriptor")
        closed = errors._StandardStream(_FlushFailingOnce(file, ebadf), "the standard error")
        with pytest.raises(UserError, match=r"^cannot write to the standard error \(Bad file"):
            closed.flush()
        denied = PermissionError(errno.EACCES, "Permission denied", "/var/log/run.log")
        named = errors._StandardStream(_FailingOnce(file, denied), "the standard output")
        with pytest.raises(PermissionError) as raised:
            named.write("a line\n")
        assert raised.value is denied


def test_streams_that_a_command_replaced_are_left_as_it_set_them(monkeypatch):
    """run_cli gives back the standard streams it guarded, not ones the command put in their
    place meanwhile."""
    monkeypatch.setattr(sys, "stdout", sys.stdout)  # given back after the test
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    replaced = io.StringIO(), io.StringIO()

    def main(argv) -> None:
        sys.stdout, sys.stderr = replaced

    assert run_cli(main, []) == 0
    assert (sys.stdout, sys.stderr) == replaced
