"""Config values as people write them (issue 12): one reading for YAML files and ``--set``.

Every spelling below goes through both routes (``load_config(..., overrides=[...])`` and a YAML file
in tmp_path) for the fields of both tasks' configs that have that type (the char LM's config has no
bool and no optional field, so those rows run on the captioner's only). Then the bounds: values that
parse but no run can use are refused with one line naming the key.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from captioner import check_data
from captioner import train as captioner_train
from captioner.config import BOUNDS as CAPTIONER_BOUNDS
from captioner.config import CaptionerConfig
from captioner.config import check_config as check_captioner
from char_lm import train as char_lm_train
from char_lm.config import BOUNDS as CHAR_LM_BOUNDS
from char_lm.config import CharLMConfig
from char_lm.config import check_config as check_char_lm
from char_lm.generate import load_char_lm
from recurrent import distributed
from recurrent.config import (
    ConfigLoader,
    Interval,
    changed_settings,
    check_bounds,
    load_config,
    number_keys,
)
from recurrent.errors import SHOWN_PATH_CHARS, UserError, run_cli, shown

REPO = Path(__file__).resolve().parents[1]
TINY = {
    CharLMConfig: REPO / "configs" / "char_lm" / "tiny.yaml",
    CaptionerConfig: REPO / "configs" / "captioner" / "tiny.yaml",
}
CHECK = {CharLMConfig: check_char_lm, CaptionerConfig: check_captioner}

# The fields each kind of spelling is tried on: (config class, dotted key).
FIELDS = {
    "float": [(CharLMConfig, "train.lr"), (CaptionerConfig, "train.lr")],
    "int": [(CharLMConfig, "data.batch_size"), (CaptionerConfig, "train.batch_size")],
    "bool": [(CaptionerConfig, "data.hflip"), (CaptionerConfig, "model.attention")],
    "optional": [(CaptionerConfig, "model.weights")],  # str | None
    "str": [(CharLMConfig, "data.path"), (CaptionerConfig, "data.image_root")],
}

NAN = object()  # expected value: a float NaN

# (kind of field, text as written, the value it must give)
ACCEPTED = [
    ("float", "3e-4", 3e-4),
    ("float", "3E-4", 3e-4),
    ("float", "1e3", 1000.0),
    ("float", ".5", 0.5),
    ("float", "+1.5", 1.5),
    ("float", "-2.5e-3", -2.5e-3),
    ("float", "1.0e30", 1e30),
    ("float", "1.0e+30", 1e30),
    ("float", "1.", 1.0),
    ("float", "2", 2.0),
    ("float", "1_000", 1000.0),
    ("float", "'3e-4'", 3e-4),  # quoted: still a number where the field is a float
    ("float", "nan", NAN),  # nan and inf parse; the bounds refuse them (test_bounds_refuse)
    ("float", ".NaN", NAN),
    ("float", "inf", math.inf),
    ("float", ".inf", math.inf),
    ("float", "-inf", -math.inf),
    ("float", "-.inf", -math.inf),
    ("int", "64", 64),
    ("int", "1_000", 1000),
    ("int", "1e3", 1000),  # a whole number written as a float
    ("int", "1E3", 1000),
    ("int", "1.5e3", 1500),
    ("int", "2.0", 2),
    ("int", "+7", 7),
    ("int", "010", 10),  # decimal: YAML 1.1 would read octal 8
    ("bool", "true", True),
    ("bool", "True", True),
    ("bool", "TRUE", True),
    ("bool", "yes", True),
    ("bool", "on", True),
    ("bool", "ON", True),
    ("bool", "1", True),
    ("bool", "false", False),
    ("bool", "False", False),
    ("bool", "no", False),
    ("bool", "Off", False),
    ("bool", "0", False),
    ("optional", "null", None),
    ("optional", "~", None),
    ("optional", "NULL", None),
    ("optional", "ResNet18_Weights.DEFAULT", "ResNet18_Weights.DEFAULT"),
    ("str", "no", "no"),  # YAML 1.1 would make these booleans, a time and a date
    ("str", "on", "on"),
    ("str", "1:30", "1:30"),
    ("str", "2024-01-01", "2024-01-01"),
]

# (kind of field, text as written, what the one-line error must say after the key)
REFUSED = [
    ("float", "3e-4x", "expected float (a number such as 3e-4), got '3e-4x'"),
    ("float", "e3", "got 'e3'"),
    ("float", "1e", "got '1e'"),
    ("float", "1.2.3", "got '1.2.3'"),
    ("float", "0x10", "got '0x10'"),
    ("float", "1,5", "got '1,5'"),
    ("float", "1__0", "got '1__0'"),
    ("float", "ten", "got 'ten'"),
    ("float", "true", "got True"),
    ("float", "null", "got None"),
    ("float", "[1]", "got [1]"),
    ("int", "1.5", "expected int (a whole number), got 1.5"),
    ("int", "1e-3", "got 0.001"),
    ("int", "ten", "got 'ten'"),
    ("int", "0x10", "got '0x10'"),
    ("int", "nan", "got 'nan'"),
    ("int", "1e400", "got inf"),
    ("int", "true", "got True"),
    ("bool", "2", "expected bool (true or false), got 2"),
    ("bool", "maybe", "got 'maybe'"),
    ("bool", "y", "got 'y'"),
    ("bool", "1.0", "got 1.0"),
    ("bool", "null", "got None"),
    ("optional", "3", "expected str | None, got 3"),
    ("str", "12", "expected str, got 12"),
]


def _cases(table: list[tuple[str, str, Any]]) -> list[Any]:
    return [
        pytest.param(cls, key, text, want, id=f"{cls.__name__}-{key}={text}")
        for kind, text, want in table
        for cls, key in FIELDS[kind]
    ]


def load(cls: type, key: str, text: str, route: str, tmp_path: Path) -> Any:
    """The config with ``key`` written as ``text``, by ``--set`` or in a YAML file."""
    if route == "set":
        return load_config(cls, TINY[cls], [f"{key}={text}"])
    section, name = key.split(".")
    path = tmp_path / "config.yaml"
    path.write_text(f"{section}:\n  {name}: {text}\n", encoding="utf-8")
    return load_config(cls, path)


def value_at(config: Any, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


@pytest.mark.parametrize("route", ["set", "yaml"])
@pytest.mark.parametrize("cls, key, text, want", _cases(ACCEPTED))
def test_accepted_spellings(cls, key, text, want, route, tmp_path):
    value = value_at(load(cls, key, text, route, tmp_path), key)
    if want is NAN:
        assert isinstance(value, float) and math.isnan(value)
    else:
        assert value == want and type(value) is type(want), (value, want)


@pytest.mark.parametrize("route", ["set", "yaml"])
@pytest.mark.parametrize("cls, key, text, message", _cases(REFUSED))
def test_refused_spellings_name_key_and_value(cls, key, text, message, route, tmp_path):
    with pytest.raises(UserError) as err:
        load(cls, key, text, route, tmp_path)
    where = f"config file {tmp_path / 'config.yaml'}: " if route == "yaml" else ""  # its source
    assert str(err.value).startswith(f"{where}config key {key!r}: expected ")
    assert str(err.value).endswith(message)
    assert "\n" not in str(err.value)


# --- properties: what Python itself reads is what the config reads -----------------------------

FORMATS = [repr, "{:e}".format, "{:E}".format, "{:.3g}".format, "{:+.17g}".format]


@given(st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(FORMATS))
def test_every_python_float_spelling_reads_as_python_reads_it(x, spell):
    text = spell(x)
    assert load_config(CharLMConfig, None, [f"train.lr={text}"]).train.lr == float(text)
    assert yaml.load(f"lr: {text}", Loader=ConfigLoader) == {"lr": float(text)}


@given(st.integers(-(10**30), 10**30), st.sampled_from(["{}", "{:_}", "{:+}", "{:+_}"]))
def test_every_python_int_spelling_reads_as_python_reads_it(n, spell):
    text = spell.format(n)
    value = load_config(CharLMConfig, None, [f"data.batch_size={text}"]).data.batch_size
    assert value == int(text) and type(value) is int


@pytest.mark.parametrize(
    "interval, inside",
    [
        ("(0, 10]", lambda x: 0 < x <= 10),
        ("[0, 1)", lambda x: 0 <= x < 1),
        ("[0, inf)", lambda x: 0 <= x < math.inf),
        ("[1, 1e9]", lambda x: 1 <= x <= 1e9),
        ("[-inf, inf]", lambda x: -math.inf <= x <= math.inf),
    ],
)
@given(x=st.floats() | st.integers(-(10**12), 10**12))
def test_interval_membership_is_the_comparison(interval, inside, x):
    assert (x in Interval.parse(interval)) == inside(x)  # NaN is in none


# --- bounds ----------------------------------------------------------------------------------------

# (config, override, the whole one-line error); the same rows run for --set and check_config.
OUT_OF_BOUNDS = [
    (CharLMConfig, "train.lr=1.0e+38", "config key 'train.lr' must be in (0, 10], got 1e+38"),
    (CharLMConfig, "train.lr=1.0e+37", "config key 'train.lr' must be in (0, 10], got 1e+37"),
    (CharLMConfig, "train.lr=0", "config key 'train.lr' must be in (0, 10], got 0.0"),
    (CharLMConfig, "train.lr=-3e-4", "config key 'train.lr' must be in (0, 10], got -0.0003"),
    (
        CharLMConfig,
        "train.lr=nan",
        "config key 'train.lr' must be a finite number in (0, 10], got nan",
    ),
    (
        CharLMConfig,
        "train.time_budget_s=inf",
        "config key 'train.time_budget_s' must be a finite number in [0, inf), got inf",
    ),
    (
        CharLMConfig,
        "train.weight_decay=-.inf",
        "config key 'train.weight_decay' must be a finite number in [0, 10], got -inf",
    ),
    (CharLMConfig, "model.dropout=1", "config key 'model.dropout' must be in [0, 1), got 1.0"),
    (
        CharLMConfig,
        "train.grad_clip=-1",
        "config key 'train.grad_clip' must be in [0, inf), got -1.0",
    ),
    (
        CharLMConfig,
        "train.min_lr_ratio=1.5",
        "config key 'train.min_lr_ratio' must be in [0, 1], got 1.5",
    ),
    (
        CharLMConfig,
        "model.hidden_size=1e6",
        "config key 'model.hidden_size' must be in [1, 8192], got 1000000",
    ),
    (
        CharLMConfig,
        "data.batch_size=0",
        "config key 'data.batch_size' must be in [1, 16384], got 0",
    ),
    (
        CharLMConfig,
        "data.block_size=1_000_000",
        "config key 'data.block_size' must be in [1, 16384], got 1000000",
    ),
    (
        CharLMConfig,
        "model.num_layers=100",
        "config key 'model.num_layers' must be in [1, 32], got 100",
    ),
    (CaptionerConfig, "train.lr=1e37", "config key 'train.lr' must be in (0, 10], got 1e+37"),
    (
        CaptionerConfig,
        "train.encoder_lr=-1",
        "config key 'train.encoder_lr' must be in [0, 10], got -1.0",
    ),
    (
        CaptionerConfig,
        "model.dropout=-0.1",
        "config key 'model.dropout' must be in [0, 1), got -0.1",
    ),
    (
        CaptionerConfig,
        "model.alpha_c=nan",
        "config key 'model.alpha_c' must be a finite number in [0, 1e6], got nan",
    ),
    (  # in [0, inf) it overflowed the first step's gradient, and the stop blamed train.lr
        CaptionerConfig,
        "model.alpha_c=1e30",
        "config key 'model.alpha_c' must be in [0, 1e6], got 1e+30",
    ),
    (
        CaptionerConfig,
        "data.image_size=1e5",
        "config key 'data.image_size' must be in [1, 2048], got 100000",
    ),
    (
        CaptionerConfig,
        "train.batch_size=1e6",
        "config key 'train.batch_size' must be in [1, 4096], got 1000000",
    ),
    (
        CaptionerConfig,
        "decode.beam_size=0",
        "config key 'decode.beam_size' must be in [1, 100], got 0",
    ),
    (
        CaptionerConfig,
        "decode.max_length=1e9",
        "config key 'decode.max_length' must be in [1, 1000], got 1000000000",
    ),
    (
        CaptionerConfig,
        "decode.length_penalty=inf",
        "config key 'decode.length_penalty' must be a finite number in [0, 10], got inf",
    ),
    (  # a share of the words read: at most all of them
        CaptionerConfig,
        "train.scheduled_sampling=1.5",
        "config key 'train.scheduled_sampling' must be in [0, 1], got 1.5",
    ),
    (
        CaptionerConfig,
        "model.encoder_stages=5",
        "config key 'model.encoder_stages' must be in [1, 4], got 5",
    ),
    (  # 0 passed the table and was then refused as "min_count must be at least 1", no key named
        CaptionerConfig,
        "data.min_word_count=0",
        "config key 'data.min_word_count' must be in [1, 1e9], got 0",
    ),
    (  # the tiny config's max_steps is 0: no limit at all (it trained 0 steps and wrote best.pt)
        CaptionerConfig,
        "train.epochs=0",
        "train.epochs and train.max_steps are both 0; set one of them",
    ),
]


@pytest.mark.parametrize(
    "cls, override, message", [pytest.param(*row, id=row[1]) for row in OUT_OF_BOUNDS]
)
def test_bounds_refuse_with_one_line(cls, override, message):
    config = load_config(cls, TINY[cls], [override])
    with pytest.raises(UserError) as err:
        CHECK[cls](config)
    assert str(err.value) == message


@pytest.mark.parametrize(
    "cls, overrides",
    [
        (CharLMConfig, ["train.lr=3e-4", "model.dropout=0", "train.min_lr_ratio=1"]),
        (CharLMConfig, ["train.lr=10", "model.hidden_size=8192", "data.batch_size=1"]),
        (CharLMConfig, ["train.lr=1e-9", "model.dropout=0.999", "train.time_budget_s=1e7"]),
        (CaptionerConfig, ["train.lr=1e-3", "train.encoder_lr=0", "decode.beam_size=100"]),
        (CaptionerConfig, ["data.image_size=2048", "train.weight_decay=1e-2", "model.alpha_c=0"]),
        (CaptionerConfig, ["decode.min_length=5", "decode.max_length=5", "model.alpha_c=1e6"]),
    ],
)
def test_values_at_the_bounds_pass(cls, overrides):
    CHECK[cls](load_config(cls, TINY[cls], overrides))


@pytest.mark.parametrize(
    "cls, bounds", [(CharLMConfig, CHAR_LM_BOUNDS), (CaptionerConfig, CAPTIONER_BOUNDS)]
)
def test_every_number_field_has_a_bound(cls, bounds):
    # A field added to a config dataclass needs a row in its task's BOUNDS.
    assert set(bounds) == set(number_keys(cls))
    for text in bounds.values():
        Interval.parse(text)
    for path in TINY[cls].parent.glob("*.yaml"):  # the shipped configs are within them
        CHECK[cls](load_config(cls, path))


def test_bounds_table_mistakes_are_internal_errors_and_unlisted_floats_stay_finite():
    config = load_config(CharLMConfig, TINY[CharLMConfig], ["train.lr=nan"])
    with pytest.raises(KeyError, match="train.lrr"):
        check_bounds(config, {"train.lrr": "(0, 1]"})
    with pytest.raises(ValueError, match="not an interval"):
        Interval.parse("0 < lr <= 10")
    with pytest.raises(UserError, match=r"^config key 'train\.lr' must be finite, got nan$"):
        check_bounds(config, {})


# --- the command lines ------------------------------------------------------------------------------


def test_char_lm_trains_two_steps_with_scientific_lr(tmp_path):
    out_dir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable, "-m", "char_lm.train",
            "--config", str(TINY[CharLMConfig]),
            "--set", "train.lr=3e-4", "train.max_steps=2", "train.eval_every=2",
            "--out-dir", str(out_dir),
        ],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "done: 2 steps" in result.stdout
    _, _, config = load_char_lm(out_dir / "last.pt")
    assert config.train.lr == 3e-4


@pytest.mark.parametrize(
    "cli, config, override, message",
    [
        (char_lm_train, CharLMConfig, "train.lr=1.0e+38", "must be in (0, 10], got 1e+38"),
        (char_lm_train, CharLMConfig, "train.lr=1.0e+37", "must be in (0, 10], got 1e+37"),
        (char_lm_train, CharLMConfig, "train.lr=3e-4x", "got '3e-4x'"),
        (captioner_train, CaptionerConfig, "train.lr=1e+37", "must be in (0, 10], got 1e+37"),
        (captioner_train, CaptionerConfig, "train.lr=fast", "got 'fast'"),
    ],
)
def test_cli_refuses_with_one_line(cli, config, override, message, tmp_path, capsys):
    argv = ["--config", str(TINY[config]), "--set", override, "--out-dir", str(tmp_path / "run")]
    capsys.readouterr()
    status = run_cli(cli.main, argv)
    captured = capsys.readouterr()
    assert status == 2
    assert captured.err.startswith("error: config key 'train.lr'") and captured.err.count("\n") == 1
    assert message in captured.err and "Traceback" not in captured.err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "cli, config",
    [
        (char_lm_train, CharLMConfig),
        (captioner_train, CaptionerConfig),
        (check_data, CaptionerConfig),
    ],
)
def test_a_number_out_of_bounds_in_the_file_names_the_file(cli, config, tmp_path, capsys):
    """The commands that read a task config pass its bounds to load_config: the file is named."""
    data = yaml.safe_load(TINY[config].read_text())
    data["train"]["lr"] = 20
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    capsys.readouterr()
    argv = ["--config", str(path)]
    if cli is not check_data:
        argv += ["--out-dir", str(tmp_path / "run")]
    status = run_cli(cli.main, argv)
    err = capsys.readouterr().err
    assert status == 2 and err == (
        f"error: config file {path}: config key 'train.lr' must be in (0, 10], got 20.0\n"
    )


# --- what the tables above cannot hold ----------------------------------------------------------

HUGE = "9" * 5000  # more digits than Python's int() converts (4300)


@pytest.mark.parametrize("route", ["set", "yaml"])
@pytest.mark.parametrize("sign", ["", "+", "-"])
def test_integers_beyond_pythons_digit_limit_keep_their_sign(sign, route, tmp_path):
    """Such an integer reads as an infinity of its sign, which the types and bounds then refuse
    by name: a huge negative learning rate is -inf (below the bound), never +inf."""
    infinity = "-inf" if sign == "-" else "inf"
    for text in (f"{sign}{HUGE}", f"'{sign}{HUGE}'"):  # a YAML int, and a quoted number
        config = load(CharLMConfig, "train.lr", text, route, tmp_path)
        assert config.train.lr == float(infinity)
        with pytest.raises(UserError) as err:
            check_char_lm(config)
        assert str(err.value).endswith(f"must be a finite number in (0, 10], got {infinity}")
    with pytest.raises(UserError) as err:
        load(CharLMConfig, "data.batch_size", f"{sign}{HUGE}", route, tmp_path)
    where = f"config file {tmp_path / 'config.yaml'}: " if route == "yaml" else ""
    assert str(err.value) == (
        f"{where}config key 'data.batch_size': expected int (a whole number), got {infinity}"
    )


@pytest.mark.parametrize("text", ["", "null\n", "~\n", "# only a comment\n", "--- null\n"])
def test_a_config_file_of_nothing_gives_the_defaults(text, tmp_path):
    """A file holding no mapping at all (empty, or a bare YAML null) leaves every default."""
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    assert load_config(CharLMConfig, path) == CharLMConfig()
    assert load_config(CharLMConfig, path, ["train.lr=0.5"]).train.lr == 0.5


def test_a_section_whose_keys_are_all_commented_out_keeps_its_defaults(tmp_path):
    """`train:` over nothing but comments is YAML's null: that section keeps its defaults (it was
    refused as "expected TrainConfig, got None"), while a key that takes a value still needs one."""
    path = tmp_path / "config.yaml"
    path.write_text("train:\n  # lr: 0.1\nmodel:\n  hidden_size: 24\n", encoding="utf-8")
    loaded = load_config(CharLMConfig, path)
    assert loaded.train == CharLMConfig().train and loaded.model.hidden_size == 24
    path.write_text("train:\n  lr:\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"'train.lr': expected float .*, got None"):
        load_config(CharLMConfig, path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("train: [unclosed\n", "is not valid YAML"),
        ("- a list\n", "must hold a mapping of sections, not list"),
        ("train:\n  lrr: 0.1\n", "unknown config key 'train.lrr'"),
        ("train:\n  lr: 1\n  lr: 2\n", "found the key 'lr' twice"),
    ],
)
def test_a_config_files_error_names_the_file_once(text, message, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as err:
        load_config(CharLMConfig, path)
    said = str(err.value)
    assert said.startswith(f"config file {path}") and said.count(str(path)) == 1, said
    assert message in said and "\n" not in said


@pytest.mark.parametrize("infinity", [math.inf, -math.inf])
def test_a_float_no_bound_names_must_still_be_finite(infinity):
    """An unlisted float field is checked against (-inf, inf): open ends, so the infinities are
    outside it as NaN is."""
    config = CharLMConfig()
    config.train.lr = infinity
    with pytest.raises(UserError) as err:
        check_bounds(config, {})
    assert str(err.value) == f"config key 'train.lr' must be finite, got {infinity}"
    check_bounds(config, {"train.lr": "[-inf, inf]"})  # a closed end lets its infinity in


@pytest.mark.parametrize(
    ("config", "check"), [(CharLMConfig, check_char_lm), (CaptionerConfig, check_captioner)]
)
def test_a_heartbeat_timeout_is_none_or_at_least_a_second(config, check):
    """0.05 s and 0.2 s ended healthy two-process jobs at once (a beat is every 0.1 s at best);
    0 turns heartbeats off."""
    cfg = config()
    if config is CaptionerConfig:
        cfg.data.annotations = "captions.json"
    for good in (0.0, 1.0, 300.0):
        cfg.train.heartbeat_timeout_s = good
        check(cfg)
    cfg.train.heartbeat_timeout_s = 0.2
    with pytest.raises(UserError, match=r"'train.heartbeat_timeout_s' must be 0 .* at least 1 s"):
        check(cfg)


@pytest.mark.parametrize(
    ("config", "check"), [(CharLMConfig, check_char_lm), (CaptionerConfig, check_captioner)]
)
def test_adamws_decay_of_a_step_is_below_one(config, check):
    """AdamW shrinks each weight matrix by lr x weight_decay a step: at 1 or more it zeroes or
    flips them (lr 10 with weight_decay 10, both in bounds, trained to a validation loss of 1e9
    with status 0). RMSprop's weight decay is an L2 term on the gradient: not bounded so."""
    cfg = config()
    if config is CaptionerConfig:
        cfg.data.annotations = "captions.json"
    cfg.train.lr, cfg.train.weight_decay = 0.5, 1.9
    check(cfg)  # 0.95: a strong decay, but a decay
    cfg.train.weight_decay = 2.0
    with pytest.raises(UserError) as err:
        check(cfg)
    assert str(err.value) == (
        "config keys 'train.lr' x 'train.weight_decay' must be below 1 with AdamW, got 0.5 x 2 = 1: "
        "each step would scale the weight matrices by 0; lower either"
    )
    cfg.train.optimizer = "rmsprop"
    check(cfg)


def test_the_encoders_adamw_decay_of_a_step_is_below_one_too():
    """The captioner's trainable encoder stages learn at train.encoder_lr, and decay with it."""
    cfg = CaptionerConfig()
    cfg.data.annotations = "captions.json"
    cfg.train.encoder_lr, cfg.train.weight_decay = 5.0, 0.2
    check_captioner(cfg)  # a frozen encoder does not train at it
    cfg.model.finetune = "last"
    with pytest.raises(UserError, match=r"'train.encoder_lr' x 'train.weight_decay' must be"):
        check_captioner(cfg)
    cfg.train.encoder_lr = 4.0
    check_captioner(cfg)


def test_heartbeats_are_on_by_default_and_a_timeout_is_never_negative():
    """By default a frozen process ends the job well before a collective's 30 minutes; a
    negative timeout (a typo for 0, or for a number) is refused, and so is one past 1e6 s."""
    cfg = CharLMConfig()
    assert 0 < cfg.train.heartbeat_timeout_s < distributed.DEFAULT_TIMEOUT_S
    for bad in (-1.0, -0.5, 2e6, math.inf):
        cfg.train.heartbeat_timeout_s = bad
        with pytest.raises(UserError, match=r"'train.heartbeat_timeout_s' must be"):
            check_char_lm(cfg)


# --- a long mistaken value: one line that reads ---------------------------------------------------

LONG = "x" * 1_000_000  # a file pasted into a --set, say
CUT = "x" * 55 + "..." + "x" * 7  # its start and end as shown, between quotes (80 in all)


@pytest.mark.parametrize("route", ["set", "yaml"])
@pytest.mark.parametrize(
    "key, text, line",
    [
        ("data.batch_size", LONG,
         f"config key 'data.batch_size': expected int (a whole number), got '{CUT}' (1,000,000 "
         "characters)"),
        (f"data.{LONG}", "3",
         f"unknown config key 'data.{CUT[5:]}' (1,000,005 characters) (known keys: data.batch_size"),
        ("train.device", LONG,
         f"unknown device '{CUT}' (1,000,000 characters); use auto, cpu or cuda (cuda:N for GPU N)"),
        ("data.path", f"builtin:{LONG}",
         f"unknown built-in text 'builtin:{CUT[8:]}' (1,000,008 characters); use one of "),
        ("train.max_steps", "1" + "0" * 3000,
         f"config key 'train.max_steps' must be in [0, 1e9], got 1{'0' * 55}...{'0' * 8} (3,001 "
         "characters)"),
    ],
)  # fmt: skip
def test_a_long_mistaken_value_is_shown_cut_to_its_ends_and_length(
    key, text, line, route, tmp_path, capsys
):
    """A value a million characters long made an error line a million characters long: the
    line shows its start, its end and its length, from a --set and from a config file."""
    if route == "set":
        argv = ["--config", str(TINY[CharLMConfig]), "--set", f"{key}={text}"]
        where = ""
    else:
        data = yaml.safe_load(TINY[CharLMConfig].read_text())
        section, name = key.split(".", 1)
        data[section][name] = text
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(data, width=math.inf))
        argv, where = ["--config", str(path)], f"config file {path}: "
    capsys.readouterr()
    status = run_cli(char_lm_train.main, [*argv, "--out-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and len(err) < 400, err[:500]
    if key in ("train.device", "data.path"):
        where = ""  # checked once the config is read, by the code that uses it
    assert err.startswith(f"error: {where}{line}"), err


@given(st.one_of(st.text(), st.binary(), st.lists(st.integers())), st.integers(30, 300))
@example("x" * 80, 80)  # 82 characters quoted: its cut form (83) would be the longer
@example("x" * 100, 80)  # 102: cut to 80 or so
def test_shown_is_the_repr_or_its_two_ends_and_length_in_fewer_characters(value, limit):
    text = repr(value)
    said = shown(value, limit)
    if said == text:
        return
    assert len(text) > limit and len(said) < len(text)
    start, rest = said.split("...", 1)
    end, length = rest.rsplit(" (", 1)
    assert text.startswith(start) and text.endswith(end) and len(start) == limit - 24
    size = len(value) if isinstance(value, str) else len(text)
    assert length == f"{size:,} characters)"


def test_an_integer_past_what_python_writes_out_is_shown_by_its_digits():
    assert shown(10**5000) == shown(-(10**5000)) == "an integer of about 5,000 digits"
    assert shown(10**3000) == f"1{'0' * 55}...{'0' * 8} (3,001 characters)"


def test_a_resumes_note_of_changed_settings_shows_a_path_whole_and_a_long_value_cut():
    path = "/data/" + "p" * 200  # a deep path: under SHOWN_PATH_CHARS, so whole
    saved = {"data": {"path": path, "url": "x"}, "train": {"lr": 0.1}}
    current = {"data": {"path": path + "2", "url": LONG}, "train": {"lr": 0.2}}
    cut = f"'{'x' * (SHOWN_PATH_CHARS - 25)}...{'x' * 7}' (1,000,000 characters)"
    assert changed_settings(saved, current) == [
        f"data.path {path!r} -> {path + '2'!r}",
        f"data.url 'x' -> {cut}",
        "train.lr 0.1 -> 0.2",
    ]
