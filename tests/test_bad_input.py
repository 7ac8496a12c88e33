"""Bad input stops before any training with one line naming the field and the fix."""
from __future__ import annotations

import os

import pytest

from benchmark import config, results
from benchmark.errors import UserError
from tests.conftest import run_cli

CASES = {
    "unknown method": (["method=nope"], "method"),
    "unknown dataset": (["dataset=nope"], "dataset"),
    "unknown arch": (["arch=nope"], "arch"),
    "unknown experiment": (["experiment=nope"], "unknown experiment 'nope'; choose one of: cafo_mnist"),
    "unknown paper": (["experiment=repro_ff", "paper=nope"], "unknown paper 'nope'; choose one of: frenkel2021"),
    "negative learning rate": (["method.hp.lr=-0.1"], "method.hp.lr"),
    "zero batch size": (["train.batch_size=0"], "train.batch_size"),
    "negative patience": (["train.patience=-1"], "train.patience"),
    "wrong type": (["train.epochs=ten"], "train.epochs"),
    "float epochs": (["train.epochs=2.5"], "train.epochs"),
    "unknown key": (["train.epochz=3"], "epochz"),
    "unknown hyperparameter": (["+method.hp.foo=1"], "method.hp.foo"),
    "another method's hyperparameter": (["method.hp.zero_init=true"], "method=<name>"),
    "bad optimizer": (["method.hp.optimizer=adamx"], "method.hp.optimizer"),
    "negative seed": (["seed=-3"], "seed"),
    "method on unsupported arch": (["method=ff", "arch=cnn"], "does not support"),
    "zero validation size": (["dataset.val_size=0"], "dataset.val_size"),
    "cuda without cuda": (["device=cuda"], "device"),
    "sweep without -m": (["train.epochs=1,2"], "-m"),
    "sweep of the sweeper's setting": (["-m", "hydra.sweeper.params.seed=0,1"], "'seed=0,1'"),
    "unknown autocast": (["train.autocast=fp8"], "train.autocast"),
    "compile a torch.func method": (["method=fg", "train.compile=true"], "cannot be compiled"),
    "pepita momentum of 1": (["method=pepita", "arch=mlp_1x1024", "method.hp.momentum=1.0"], "less than"),
    "unknown activation": (["arch=mlp", "arch.activation=swish"], "arch.activation"),
    "empty widths": (["arch=mlp", "arch.widths=[]"], "arch.widths"),
    "zero width": (["arch=mlp", "arch.widths=[0]"], "arch.widths[0]"),
    "widths not a list": (["arch=mlp", "arch.widths=abc"], "arch.widths"),
    "width not an integer": (["arch=mlp", "arch.widths=[12.5]"], "arch.widths[0]"),
    "zero cnn channels": (["arch=cnn", "arch.channels=[32,0]"], "arch.channels[1]"),
    "zero resnet width": (["method=bp", "arch=resnet18_w8", "arch.width=0"], "arch.width"),
    "unknown arch field": (["arch=mlp", "+arch.height=3"], "arch.height"),
    "depth disagrees with widths": (["arch=mlp", "+arch.depth=3"], "arch.depth=3"),
    "nvml on a cpu run": (["device=cpu", "measure.energy=nvml"], "measure.energy=nvml"),
    "rapl where none is readable": (["device=cpu", "measure.energy=rapl", "measure.rapl_root=/nonexistent"], "measure.energy=rapl"),
    "codecarbon energy without codecarbon": (["measure.energy=codecarbon", "measure.emissions=false"], "measure.energy=codecarbon"),
    "zero method batch size": (["method.batch_size=0"], "method.batch_size"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_override_gives_one_line_naming_the_field(name, tmp_path):
    overrides, needle = CASES[name]
    if name == "cuda without cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
    with pytest.raises(UserError) as info:
        config.preflight(["dataset=digits", f"results_dir={tmp_path}", *overrides])
    message = str(info.value)
    assert "\n" not in message
    assert needle in message
    assert ";" in message  # what is wrong; how to fix it


def test_missing_dataset_offline_names_dataset_and_path(tmp_path):
    with pytest.raises(UserError) as info:
        config.preflight(["dataset=mnist", f"data.root={tmp_path}", "data.download=false", f"results_dir={tmp_path}"])
    message = str(info.value)
    assert "mnist" in message and str(tmp_path) in message and "prepare.py" in message


def test_cifar10_jpeg_missing_is_caught_before_training(tmp_path):
    with pytest.raises(UserError, match="cifar10_jpeg"):
        config.preflight(["dataset=cifar10_jpeg", "arch=cnn", f"data.root={tmp_path}", f"results_dir={tmp_path}"])


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere; permissions cannot be tested as root")
def test_unwritable_results_dir(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(UserError, match="not writable"):
        config.preflight(["dataset=digits", f"results_dir={locked / 'sub'}"])


def test_unwritable_results_dir_is_a_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="results directory"):
        config.preflight(["dataset=digits", f"results_dir={blocker}"])


def test_a_bad_cell_in_a_grid_stops_the_whole_grid_before_training(tmp_path):
    with pytest.raises(UserError, match="method.hp.lr"):
        config.preflight(["-m", "dataset=digits", f"results_dir={tmp_path}", "method=bp,ff", "arch=mlp", "method.hp.lr=-1"])


def test_cli_prints_one_line_exits_2_and_records_nothing(tmp_path):
    existing = tmp_path / "single" / "runs.jsonl"
    results.append(existing, {"schema_version": 1, "run_id": "keep-me", "status": "completed"})
    before = existing.read_bytes()
    out = run_cli("dataset=digits", "method.hp.lr=-0.5", f"results_dir={tmp_path}")
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("bpfree-bench: error: method.hp.lr=-0.5 must be greater than 0")
    assert existing.read_bytes() == before  # nothing recorded, nothing lost


def test_cli_unknown_method_lists_the_choices(tmp_path):
    out = run_cli("method=backprop", f"results_dir={tmp_path}")
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1
    assert "bp" in out.stderr and "ff" in out.stderr
