"""One source of truth for configuration: the configs check themselves when made, and the CLI
takes every default and choice from them."""
import dataclasses

import click
import pytest
from click.testing import CliRunner

from ecgshard import config as C
from ecgshard.cli import _codes, _folds, main
from ecgshard.errors import ECGShardError


@pytest.mark.parametrize("make,message", [
    (lambda: C.ZeroShotConfig(run="r", shards="s", text="t", out="o", threshold="val_seen"),
     "--threshold must be one of"),
    (lambda: C.ZeroShotConfig(run="r", shards="s", text="t", out="o", threshold="fixed:high"),
     "--threshold must be one of"),
    (lambda: C.FitConfig(shards="s", text="t", out="o", loss="siglip"), "--loss must be one of"),
    (lambda: C.FitConfig(shards="s", text="t", out="o", val_folds=(10,)),
     "test folds never steer training"),
    (lambda: C.FitConfig(shards="s", text="t", out="o", train_folds=(1, 2), val_folds=(2,)),
     "overlap"),
    (lambda: C.BuildConfig(source_dir="s", out_dir="o", format="mimic"), "--format must be one"),
    (lambda: C.BuildConfig(source_dir="s", out_dir="o", band=(40.0, 0.5)), "--band"),
    (lambda: C.TextConfig(vocab=(), out="o", templates=("an ECG showing",)), "{name}"),
    (lambda: C.DownloadConfig(database="sph", dest="d"), "--database must be one of"),
])
def test_a_bad_value_fails_when_the_config_is_made(make, message):
    with pytest.raises(ECGShardError, match=message):
        make()


def test_a_mistyped_threshold_fails_before_any_record_is_read(tmp_path, monkeypatch):
    from ecgshard import zeroshot

    monkeypatch.setattr(zeroshot, "run", lambda cfg: pytest.fail("zeroshot.run was called"))
    for d in ("run", "shards"):
        (tmp_path / d).mkdir()
    (tmp_path / "t.h5").write_text("")
    result = CliRunner().invoke(main, ["zeroshot", "--run", str(tmp_path / "run"), "--shards",
                                       str(tmp_path / "shards"), "--text", str(tmp_path / "t.h5"),
                                       "--out", str(tmp_path / "o"), "--threshold", "val_z"])
    assert result.exit_code == 2 and "--threshold must be one of" in result.output


CONFIG_OF = {"build": C.BuildConfig, "embed-text": C.TextConfig, "fit": C.FitConfig,
             "zeroshot": C.ZeroShotConfig, "download": C.DownloadConfig,
             "predict": C.PredictConfig, "embed": C.EmbedConfig, "probe": C.ProbeConfig}


@pytest.mark.parametrize("command", sorted(CONFIG_OF))
def test_cli_defaults_and_choices_are_the_configs(command):
    cls = CONFIG_OF[command]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    checked = 0
    for param in main.commands[command].params:
        name = {"min_macro_positives": "min_positives"}.get(param.name, param.name)
        if name not in fields or param.required or param.is_flag and not param.secondary_opts:
            continue
        default = C.default(cls, name)
        shown = param.default
        if isinstance(default, tuple) and isinstance(shown, str):      # a comma list
            shown = _folds(shown) if name.endswith("folds") else _codes(shown)
            if default and isinstance(default[0], float):
                shown = tuple(map(float, shown))
        assert shown == default, (command, name)
        allowed = C.allowed(cls, name)
        if allowed is not None:
            assert isinstance(param.type, click.Choice)
            assert set(param.type.choices) == {str(a) for a in allowed if a is not None}
        checked += 1
    assert checked >= 4


def test_an_experiment_is_made_of_the_stage_configs():
    cfg = C.ExperimentConfig(work="w", ptbxl="p")
    assert cfg.fit == C.FitConfig(shards="", text="", out="")
    assert cfg.text == C.TextConfig(vocab=(), out="")
    assert cfg.zeroshot == C.ZeroShotConfig(run="", shards="", text="", out="")
    # no stage field is restated: the only shared name is the nested text config itself
    stage_fields = {f.name for cls in (C.FitConfig, C.TextConfig, C.ZeroShotConfig)
                    for f in dataclasses.fields(cls)}
    assert {f.name for f in dataclasses.fields(C.ExperimentConfig)} & stage_fields == {"text"}


def test_the_command_line_loads_no_heavy_library_before_a_command_runs():
    """`ecgshard --help` must not pay for torch, scikit-learn, numba or scipy (seconds of
    import); each command imports what it needs (a command whose choices are a registry of
    torch modules, fit's --arch, imports torch to list them)."""
    import subprocess
    import sys

    heavy = ("torch", "sklearn", "numba", "scipy", "h5py", "neurokit2", "matplotlib", "pandas")
    out = subprocess.run([sys.executable, "-c", "import sys, ecgshard.cli; from click.testing "
                          "import CliRunner; r = CliRunner().invoke(ecgshard.cli.main, "
                          "['--help']); assert r.exit_code == 0, r.output; print("
                          f"[m for m in {heavy!r} if m in sys.modules])"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("load,env,requested,expected", [
    (0.1, None, 0, 4), (2.6, None, 0, 1), (1.4, None, 0, 3), (9.0, None, 0, 1),
    (0.0, None, 2, 2), (0.0, "3", 0, 3)])
def test_threads_leave_the_cores_other_jobs_keep_busy(monkeypatch, load, env, requested,
                                                      expected):
    from ecgshard import device

    monkeypatch.setattr(device, "cpu_budget", lambda: 4)
    monkeypatch.setattr(device, "busy_cores", lambda: load)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    if env:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    assert device.choose_threads(requested)[0] == expected


def test_busy_cores_sees_a_spinning_process():
    import multiprocessing

    from ecgshard import device

    stop = multiprocessing.Event()
    spinner = multiprocessing.Process(target=_spin, args=(stop,))
    spinner.start()
    try:
        busy = device.busy_cores(0.3)
    finally:
        stop.set()
        spinner.join()
    # the spinner keeps at least one core busy, whatever else runs; never more than there are
    assert 0.5 < busy <= device.cpu_budget() + 0.1


def _spin(stop):
    while not stop.is_set():
        pass


def test_the_threads_option_sets_them_before_torch_starts(monkeypatch):
    import os

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, "7")        # restored after the test
    result = CliRunner().invoke(main, ["--threads", "1", "relations", "SBRAD"])
    assert result.exit_code == 0, result.output
    assert os.environ["OMP_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == "1"
