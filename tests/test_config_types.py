"""``sweep --config``: a TOML key takes what its flag takes; anything else is one line naming the key.
Quantities carry their units (sizes, durations, tolerances), in TOML as on the command line."""

from __future__ import annotations

import textwrap

import pytest

from fps_profile.cli import build_parser, main
from fps_profile.errors import UserError

MODEL = "test_vit"


def _grid(tmp_path, text: str, *flags):
    from fps_profile.cli.sweep_cmd import build_grid

    conf = tmp_path / "grid.toml"
    conf.write_text(textwrap.dedent(text))
    args = build_parser().parse_args(["sweep", "--config", str(conf), *flags])
    return build_grid(args), args


def test_a_single_value_or_a_comma_string_is_a_list(tmp_path):
    grid, _ = _grid(tmp_path, '''
        models = "test_vit"
        selectors = "fps, gps"
        batch_sizes = 4
        dtypes = "bfloat16"
        phases = "select"
        checkpointing = true
        budget = "k=2"
    ''')
    assert grid.models == ["test_vit"] and grid.selectors == ["fps", "gps"] and grid.batch_sizes == [4]
    assert grid.dtypes == ["bfloat16"] and grid.phases == ["select"] and grid.checkpointing == [True]
    assert grid.budget == ["k=2"]
    grid.validate()
    assert {c.model for c in grid.cells()} == {"test_vit"}


def test_numbers_as_text_like_flags(tmp_path):
    grid, args = _grid(tmp_path, 'batch_sizes = ["1", 2]\nwarmup = "0"\nrepeats = 2\ntimeout = "90s"\nretries = 1\n')
    assert grid.batch_sizes == [1, 2] and grid.warmup == 0 and grid.repeats == 2
    assert args.timeout == 90.0 and args.retries == 1


def test_sweep_table_and_settings(tmp_path):
    grid, args = _grid(tmp_path, '''
        [sweep]
        models = ["test_vit"]
        out = "x.jsonl"
        timeout = 120
        memory_budget = "2GiB"
        [frontier]
        images = 5
    ''', "--timeout", "5min")
    assert grid.memory_budget == 2 * 2**30 and args.out == "x.jsonl"
    assert args.timeout == 300.0  # the flag wins over the file


@pytest.mark.parametrize("text, needle", [
    ("models = 5", "models: model must be a name, not 5"),
    ('models = ["test_vit", 3]', "models: model must be a name, not 3"),
    ('models = [["test_vit"]]', "models takes a list of single values"),
    ('devices = {cpu = 1}', "devices takes a list of single values"),
    ("batch_sizes = 1.5", "batch_sizes: batch size must be an integer >= 1, not 1.5"),
    ("batch_sizes = [true]", "batch_sizes: batch size must be an integer >= 1, not True"),
    ('warmup = [1, 2]', "warmup takes one value"),
    ("scope = 1", "scope takes names as text"),
    ("repeats = 0", "repeats: repeats must be an integer >= 1"),
    ("image_size = \"big\"", "image_size: image size must be an integer >= 1"),
    ("memory_budget = 8", "memory_budget 8 has no unit"),
    ('memory_budget = "8"', "has no unit: write e.g. 8GiB"),
    ('timeout = "soon"', "timeout must be a duration"),
    ("timeout = -5", "timeout must be more than 0 seconds"),
    ("out = 3", "out must be text, not 3"),
    ('max_batch = "yes"', "max_batch must be true or false"),
    ("retries = -1", "retries must be an integer >= 0"),
    ('frontier = 1', "frontier must be true or false"),
    ('options = "gps"', "options must be tables [options.<selector>]"),
    ('[options.gps]\nviews = [1, 2]', "options.gps.views takes one value"),
    ("modles = ['x']", "unknown key 'modles'; did you mean 'models'"),
    ('sweep = 3', "sweep must be a table"),
])
def test_wrong_types_name_the_key(tmp_path, capsys, text, needle):
    conf = tmp_path / "grid.toml"
    conf.write_text(text + "\n")
    out = tmp_path / "r.jsonl"
    rc = main(["sweep", "--no-progress", "--config", str(conf), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("fps-profile: error: config "), err
    assert needle in err, err
    assert not out.exists()


@pytest.mark.parametrize("flags, needle", [
    (["--memory-budget", "8"], "--memory-budget '8' has no unit: write e.g. 8GiB"),
    (["--memory-budget", "-8GiB"], "--memory-budget must be more than 0 bytes, not '-8GiB'"),
    (["--memory-budget", "0GiB"], "more than 0 bytes"),
    (["--timeout", "-5"], "--timeout must be more than 0 seconds, not '-5'"),
    (["--timeout", "5 parsecs"], "--timeout must be a duration"),
    (["--retries", "-1"], "--retries must be an integer >= 0, not '-1'"),
    (["--batch-size", "-4"], "batch size must be an integer >= 1, not '-4'"),
])
def test_unit_bearing_and_negative_flags(tmp_path, capsys, flags, needle):
    out = tmp_path / "r.jsonl"
    rc = main(["sweep", "--no-progress", "--model", MODEL, *flags, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and needle in err, err
    assert not out.exists()


def test_sizes_and_durations_by_hand():
    from fps_profile.units import parse_bytes, parse_percent, parse_seconds

    assert parse_bytes("8GiB") == 8 * 2**30 and parse_bytes("8GB") == 8 * 10**9 and parse_bytes("8 gib") == 8 * 2**30
    assert parse_bytes("1.5MiB") == 3 * 2**19 and parse_bytes("1024B") == 1024
    assert parse_seconds(90) == 90.0 and parse_seconds("500ms") == 0.5 and parse_seconds("2h") == 7200.0
    assert parse_seconds("5min") == 300.0
    assert parse_percent("5%") == 0.05 and parse_percent("0%") == 0.0
    for bad in ("8", 8, "8XB", "GiB", True, "nanGiB", "-1GiB"):
        with pytest.raises(UserError):
            parse_bytes(bad)
    for bad in ("5", "0.05", 0.05, "-1%", "5%%"):
        with pytest.raises(UserError):
            parse_percent(bad)


def test_frontier_memory_needs_units(tmp_path, capsys):
    rc = main(["frontier", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "f"), "--memory", "24,80GiB"])
    err = capsys.readouterr().err
    assert rc == 2 and "--memory '24' has no unit" in err


def _study():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "frontier_study.py"
    spec = importlib.util.spec_from_file_location("frontier_study", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


STUDY = '''
[sweep]
batch_sizes = 8
out = "x.jsonl"
[frontier]
images = 64
plots = "p"
amp = "none"
checkpointing = [false, true]
micro_batch = [0, 8]
micro_batch_batch_sizes = 32
[[frontier.variant]]
selector = "gps"
knobs = ["checkpointing", "micro_batch"]
'''


def test_frontier_study_file_takes_one_values_as_lists(tmp_path):
    path = tmp_path / "study.toml"
    path.write_text(STUDY)
    cmds = _study().commands(str(path))
    # gps: checkpointing x micro-batch (2 x 2); micro-batched cells at 32, plain ones at 8
    assert len(cmds) == 4 + 1 and cmds[-1][:2] == ["frontier", "x.jsonl"]
    assert sum("--batch-size" in c and c[c.index("--batch-size") + 1] == "32" for c in cmds) == 2


@pytest.mark.parametrize("old, new, needle", [
    ("micro_batch = [0, 8]", 'micro_batch = [0, "8"]', "micro_batch takes integers >= 0, not '8'"),
    ("images = 64", 'images = "64"', "images takes integers >= 1"),
    ('knobs = ["checkpointing", "micro_batch"]', 'knobs = ["ckpt"]', "unknown knob 'ckpt'"),
    ("batch_sizes = 8", "", "[sweep]: batch_sizes is missing"),
    ("[[frontier.variant]]", "[frontier.variant]", "[[frontier.variant]] tables are needed"),
])
def test_frontier_study_file_wrong_types_are_one_line(tmp_path, capsys, old, new, needle):
    path = tmp_path / "study.toml"
    path.write_text(STUDY.replace(old, new))
    assert _study().main([str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("frontier_study: error: ") and err.count("\n") == 1 and needle in err, err
