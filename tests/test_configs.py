"""Every shipped config composes, and every experiment pairs each method with BP on the same cell."""
from __future__ import annotations


import pytest

from benchmark import archs, config
from tests.conftest import graph_root

EXPERIMENTS = sorted(p.stem for p in (config.CONFIG_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", [e for e in EXPERIMENTS if not e.startswith(("repro", "diagnostics"))])
def test_experiment_pairs_every_method_with_bp_on_the_same_arch(experiment, tmp_path):
    # (Reproductions run a paper's own settings, BP only where the paper compares with it;
    # tests/test_reproduction.py checks them. Diagnostics experiments compare each method with
    # BP's gradient on the method's own network, not with a BP run; tests/test_diagnostics.py.)
    jobs = [j for j in config.preflight([f"experiment={experiment}", f"results_dir={tmp_path}",
                                         f"data.root={graph_root()}"]) if j.supported]
    cells = {(j.cfg.method.name, j.cfg.arch.name, j.cfg.dataset.name) for j in jobs}
    assert any(m != "bp" for m, _, _ in cells)
    for method, arch, dataset in cells:
        assert ("bp", arch, dataset) in cells, f"{experiment}: {method} on {arch}/{dataset} has no BP twin"
    budgets = {(j.cfg.tuning.n_trials, j.cfg.tuning.max_epochs, j.cfg.tuning.n_seeds) for j in jobs}
    assert len(budgets) == 1, "every method of an experiment gets the same budget"


def test_every_published_figure_names_a_cell_the_harness_can_run(tmp_path):
    """configs/published.yaml is the one place for published figures: each names an existing
    method, arch and dataset that run together, with accuracy as a fraction like every record:
    as named, or, where the cell needs more (LeNet needs MNIST resized to 32x32), through the
    configs/paper/ file of that cell. A figure's `epochs` (the paper's epoch budget, which flags
    runs capped below it as budget-limited) is that file's `train.epochs`."""
    from benchmark.errors import UserError
    from benchmark.report import published_figures

    figures = published_figures()
    assert figures
    cells, paper_epochs = {}, {}
    for paper in sorted((config.CONFIG_DIR / "paper").glob("*.yaml")):
        cfg = config.compose([f"paper={paper.stem}", "data.download=true", f"data.root={graph_root()}"])
        cells.setdefault((cfg.method.name, cfg.arch.name, cfg.dataset.name), paper.stem)
        paper_epochs.setdefault((cfg.method.name, cfg.arch.name, cfg.dataset.name), set()).add(cfg.train.epochs)
    for f in figures:
        key = (f["method"], f["arch"], f["dataset"])
        if key in paper_epochs:  # one budget per cell, and the figure states it
            assert paper_epochs[key] == {f.get("epochs")}, (f, paper_epochs[key])
        else:
            assert f.get("epochs") is None or f["epochs"] > 0, f
        if f["test_accuracy"] is None:  # a figure the project cannot read: it must say why
            assert f.get("not_held"), f
        else:
            assert 0 < f["test_accuracy"] <= 1 and 0 <= f["tolerance"] < 0.2, f
        if f.get("stand_in"):  # a dataset of configs/dataset/ that is not the figure's own
            assert f["stand_in"] != f["dataset"] and (config.CONFIG_DIR / "dataset" / f"{f['stand_in']}.yaml").exists(), f
        named = [f"method={f['method']}", f"arch={f['arch']}", f"dataset={f['dataset']}"]
        try:
            config.check(config.compose([*named, f"results_dir={tmp_path}", "data.download=true", f"data.root={graph_root()}"]))
        except UserError:
            paper = cells.get((f["method"], f["arch"], f["dataset"]))
            assert paper, f"{named} does not run as named and no configs/paper/ file sets it up"
            config.check(config.compose([f"paper={paper}", f"results_dir={tmp_path}", "data.download=true",
                                         f"data.root={graph_root()}"]))


@pytest.mark.parametrize("arch", sorted(p.stem for p in (config.CONFIG_DIR / "arch").glob("*.yaml")))
def test_every_arch_preset_composes(arch, tmp_path):
    method = "cafo_rand" if arch == "cnn" else "bp"
    on_graph = config.compose([f"arch={arch}"]).arch.kind in archs.GRAPH_KINDS
    dataset = ["dataset=cora", f"data.root={graph_root()}"] if on_graph else ["dataset=digits"]
    if arch == "lenet":  # 32x32 images only (BioTorch resizes MNIST); digits are 8x8
        dataset.append("dataset.resize=32")
    [job] = config.preflight([f"arch={arch}", f"method={method}", *dataset, f"results_dir={tmp_path}"])
    if arch == "mlp_depth":
        assert list(job.cfg.arch.widths) == [job.cfg.arch.width] * job.cfg.arch.depth
        assert job.cfg.arch.name == f"mlp_d{job.cfg.arch.depth}_w{job.cfg.arch.width}"
    elif arch.startswith("mlp_"):  # mlp_<count>x<width>[_<activation>]
        shape, _, activation = arch.removeprefix("mlp_").partition("_")
        width, count = shape.split("x")[::-1]
        assert list(job.cfg.arch.widths) == [int(width)] * int(count)
        assert job.cfg.arch.activation == (activation or job.cfg.arch.activation)


def test_smoke_benchmark_covers_every_registered_method(tmp_path):
    from benchmark import spec as methods

    jobs = [j for smoke in ("smoke", "smoke_graph")  # `make smoke` runs both
            for j in config.preflight([f"experiment={smoke}", f"results_dir={tmp_path}", f"data.root={graph_root()}"])
            if j.supported]
    assert {j.cfg.method.name for j in jobs} == set(methods.names())


def test_a_run_is_composed_and_checked_once(tmp_path):
    """`python -m benchmark ...`: preflight checks the job, and the Hydra task reuses that check."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "import benchmark.config as c\n"
        "calls = []\n"
        "real = c.check\n"
        "c.check = lambda cfg: calls.append(1) or real(cfg)\n"
        "import benchmark.__main__ as m\n"
        f"sys.argv = ['bpfree-bench', 'method=bp', 'arch=mlp', 'arch.widths=[32]', 'dataset=digits', 'train.epochs=1',\n"
        f"            'measure.emissions=false', 'measure.flops=false', 'results_dir={tmp_path}']\n"
        "m.main()\n"
        "print('CHECKS', len(calls))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=config.CONFIG_DIR.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "CHECKS 1" in out.stdout, out.stdout[-1000:]
