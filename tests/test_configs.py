"""Every shipped config composes, and every experiment pairs each method with BP on the same cell."""
from __future__ import annotations


import pytest

from benchmark import config

EXPERIMENTS = sorted(p.stem for p in (config.CONFIG_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_pairs_every_method_with_bp_on_the_same_arch(experiment, tmp_path):
    jobs = [j for j in config.preflight([f"experiment={experiment}", f"results_dir={tmp_path}"]) if j.supported]
    cells = {(j.cfg.method.name, j.cfg.arch.name, j.cfg.dataset.name) for j in jobs}
    assert any(m != "bp" for m, _, _ in cells)
    for method, arch, dataset in cells:
        assert ("bp", arch, dataset) in cells, f"{experiment}: {method} on {arch}/{dataset} has no BP twin"
    budgets = {(j.cfg.tuning.n_trials, j.cfg.tuning.max_epochs, j.cfg.tuning.n_seeds) for j in jobs}
    assert len(budgets) == 1, "every method of an experiment gets the same budget"
    for ref in jobs[0].cfg.references:
        assert (ref.method, ref.arch, ref.dataset) in cells, f"reference for a cell the grid does not run: {ref}"


@pytest.mark.parametrize("arch", sorted(p.stem for p in (config.CONFIG_DIR / "arch").glob("*.yaml")))
def test_every_arch_preset_composes(arch, tmp_path):
    method = "cafo_rand" if arch == "cnn" else "bp"
    [job] = config.preflight([f"arch={arch}", f"method={method}", "dataset=digits", f"results_dir={tmp_path}"])
    if arch.startswith("mlp_"):
        width, count = arch.removeprefix("mlp_").split("x")[::-1]
        assert list(job.cfg.arch.widths) == [int(width)] * int(count)


def test_smoke_benchmark_covers_every_registered_method(tmp_path):
    from benchmark import spec as methods

    jobs = [j for j in config.preflight(["experiment=smoke", f"results_dir={tmp_path}"]) if j.supported]
    assert {j.cfg.method.name for j in jobs} == set(methods.names())
