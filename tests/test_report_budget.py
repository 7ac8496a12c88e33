"""A cell whose validation accuracy was still rising when its budget ran out, or whose training
loss climbed back above where it started, is flagged, and the report makes no better/worse claim
about it (synthetic records, known curves)."""
from __future__ import annotations

import pandas as pd
import pytest

from benchmark.report import numbers


def final(method: str, seed: int, curve: list[float], test_acc: float, stop: str = "max_epochs") -> dict:
    return {
        "kind": "final", "status": "completed", "method": method, "arch": "mlp", "dataset": "mnist", "seed": seed,
        "budget": {"n_trials": 2, "max_epochs": len(curve), "n_seeds": 3},
        "config": {"train": {"patience": 2}},
        "metrics": {"test_accuracy": test_acc, "stop_reason": stop,
                    "history": [{"epoch": i + 1, "val_accuracy": v} for i, v in enumerate(curve)]},
        "measurements": {"time_total": {"value": 60.0, "unit": "s", "source": "time.perf_counter", "estimated": False}},
    }


def cells(ff_curves, ff_accs, bp_curve=(0.95, 0.97, 0.975, 0.976, 0.976, 0.976)):
    runs = [final("bp", s, list(bp_curve), acc) for s, acc in zip((1, 2, 3), (0.975, 0.976, 0.977))]
    runs += [final("ff", s, c, a) for s, (c, a) in enumerate(zip(ff_curves, ff_accs), start=1)]
    return numbers.summarise(runs), runs


def test_a_rising_cell_is_flagged_and_gets_no_worse_than_claim():
    # The case: two epochs, validation 76 % -> 88 %, test accuracy 9 pp under BP's.
    rows, runs = cells([[0.76, 0.88], [0.75, 0.87], [0.77, 0.89]], [0.88, 0.885, 0.89])
    ff = next(r for r in rows if r.method == "ff")
    assert ff.convergence.rising and ff.convergence.rise_pp == pytest.approx(12.0)
    [sentence] = numbers.significance_sentences(rows)
    assert sentence["budget_limited"]
    assert "worse" not in sentence["sentence"] and "better" not in sentence["sentence"]
    assert "budget was too small to tell" in sentence["sentence"] and "+12.00 pp over its last 2 epochs" in sentence["sentence"]
    reference = [{"method": "ff", "arch": "mlp", "dataset": "mnist", "test_accuracy": 0.9833, "tolerance": 0.01, "source": "x"}]
    [verdict] = numbers.reproduction(rows, reference)
    assert verdict["verdict"].startswith("budget too small to tell") and "fail" not in verdict["verdict"]
    table = numbers.summary_table(rows)
    assert table.set_index("method").loc["ff", "converged"].startswith("no: ")
    assert table.set_index("method").loc["bp", "converged"] == "yes"
    assert "2 tuning trials x at most" in numbers.budget_summary(runs)


def test_a_flat_cell_keeps_its_claim():
    flat = [0.86, 0.88, 0.885, 0.886, 0.886, 0.885]
    rows, _ = cells([flat, [x - 0.002 for x in flat], [x + 0.002 for x in flat]], [0.88, 0.885, 0.89])
    ff = next(r for r in rows if r.method == "ff")
    assert not ff.convergence.rising
    [sentence] = numbers.significance_sentences(rows)
    assert not sentence["budget_limited"] and "worse than BP beyond the seed noise" in sentence["sentence"]


def test_a_rise_inside_the_seed_noise_is_not_a_trend():
    # Final thirds (3 of 9 epochs) rising +0.8, -0.5 and +0.1 pp: a positive mean (+0.13 pp), far
    # inside its one-sided 95 % bound over three seeds.
    head = [0.70, 0.78, 0.82, 0.85, 0.87, 0.875]
    curves = [head + [0.880, 0.884, 0.888], head + [0.884, 0.8815, 0.879], head + [0.882, 0.8825, 0.883]]
    rows, _ = cells(curves, [0.88, 0.885, 0.89])
    ff = next(r for r in rows if r.method == "ff").convergence
    assert ff.rise_pp == pytest.approx(0.8 / 3 - 0.5 / 3 + 0.1 / 3 + 0.0, abs=0.01) and ff.rise_pp > 0
    assert ff.window == 3 and not ff.rising


def with_losses(run: dict, losses: list[float], phase: str = "train") -> dict:
    for h, loss in zip(run["metrics"]["history"], losses):
        h.update(train_loss=loss, phase=phase)
    return run


def test_a_training_loss_that_climbs_back_above_its_first_epoch_is_flagged_unstable():
    # DFA at too high a rate on Fashion-MNIST: accuracy flat at 85 % while the loss went from 25 to
    # 585 (the superseded record in docs/reproduction). The curve alone says "converged".
    flat = [0.86, 0.88, 0.885, 0.886, 0.886, 0.885]
    rows, runs = cells([flat] * 3, [0.88, 0.885, 0.89])
    falling = [2.0, 1.0, 0.6, 0.5, 0.45, 0.44]
    for r in runs:
        with_losses(r, [25.0, 180.0, 430.0, 585.0, 100.0, 31.0] if (r["method"], r["seed"]) == ("ff", 2) else falling)
    rows = numbers.summarise(runs)
    ff, bp = (next(r for r in rows if r.method == m).convergence for m in ("ff", "bp"))
    # the highest median of 3 consecutive later epochs: (180, 430, 585) -> 430
    assert not ff.rising and ff.unstable == ((2, pytest.approx(430 / 25)),) and not ff.settled
    assert bp.settled and bp.unstable == ()
    [sentence] = numbers.significance_sentences(rows)
    assert sentence["unstable"] and not sentence["budget_limited"] and sentence["verdict"] == "unstable training: no claim"
    assert "worse than BP" not in sentence["sentence"] and "seed 2: 17.2x" in sentence["sentence"]
    reference = [{"method": "ff", "arch": "mlp", "dataset": "mnist", "test_accuracy": 0.885, "tolerance": 0.01, "source": "x"}]
    [verdict] = numbers.reproduction(rows, reference)
    assert verdict["verdict"].startswith("within tolerance") and "unstable: training loss rose" in verdict["verdict"]
    table = numbers.summary_table(rows).set_index("method")
    assert table.loc["ff", "converged"].startswith("no: unstable") and table.loc["bp", "converged"] == "yes"
    # Still rising and unstable: each said once, the budget first.
    rising = [with_losses(final("ff", 1, [0.76, 0.88], 0.88), [2.0, 3.0])]
    [both] = numbers.reproduction(numbers.summarise(rising), [{**reference[0], "test_accuracy": 0.95}])
    assert both["verdict"].startswith("budget too small to tell: not converged at this budget: validation accuracy still rising")
    assert both["verdict"].count("unstable") == 1 and both["verdict"].endswith("(seed 1: 1.5x)")


def test_a_one_epoch_loss_spike_that_recovers_is_not_unstable_but_a_sustained_climb_is():
    # FF on the 4x2000 MLP (docs/reproduction/repro_ff): 114 at epoch 1, a spike to 110.7 at epoch 96,
    # 0.02x the next epoch, 98.37 % test accuracy. Its paper's figure is reproduced.
    spike = with_losses(final("ff", 0, [0.9] * 7, 0.98), [114.0, 40.0, 27.0, 110.7, 20.0, 35.0, 18.0])
    assert numbers.loss_rise(spike) == pytest.approx(40.0 / 114.0)  # median of (40, 27, 110.7)
    assert numbers.convergence([spike]).unstable == ()
    # Two of three consecutive epochs above the start: a climb, even though it comes back down.
    climb = with_losses(final("ff", 1, [0.9] * 7, 0.98), [10.0, 8.0, 12.0, 13.0, 9.0, 5.0, 4.0])
    assert numbers.loss_rise(climb) == pytest.approx(1.2)
    assert numbers.convergence([climb]).unstable == ((1, pytest.approx(1.2)),)


def test_a_loss_drifting_up_a_percent_on_its_plateau_is_not_unstable():
    # fgnn_sf_topdown on Cora: 1.933 -> 1.941 over its first 4 epochs, then down to 0.22 (69.9 %).
    drift = with_losses(final("fgnn_sf_topdown", 0, [0.3] * 7, 0.699), [1.933, 1.936, 1.939, 1.941, 1.2, 0.5, 0.11])
    assert numbers.loss_rise(drift) == pytest.approx(1.939 / 1.933)
    assert numbers.convergence([drift]).unstable == ()


def test_a_loss_rise_is_read_per_phase_and_only_on_positive_losses():
    run = final("cafo_dfa", 0, [0.5] * 5, 0.9)
    run["metrics"]["history"] = [{"epoch": 1, "phase": "blocks", "train_loss": 0.12}, {"epoch": 2, "phase": "blocks", "train_loss": 0.03},
                                 {"epoch": 3, "phase": "predictors", "train_loss": 0.48}, {"epoch": 4, "phase": "predictors", "train_loss": 0.2}]
    assert numbers.loss_rise(run) == pytest.approx(0.2 / 0.48)  # a new phase starting higher is not a rise
    run["metrics"]["history"][3]["train_loss"] = 0.5
    assert numbers.loss_rise(run) == pytest.approx(0.5 / 0.48)
    run["metrics"]["history"] = [{"epoch": 1, "train_loss": -2.0}, {"epoch": 2, "train_loss": -1.0}, {"epoch": 3, "train_loss": None}]
    assert numbers.loss_rise(run) is None  # an ELBO-like loss below zero: no ratio to read
    run["metrics"]["history"] = [{"epoch": 1, "train_loss": 0.4}]
    assert numbers.loss_rise(run) is None


def test_one_epoch_is_no_evidence_of_convergence():
    rows, _ = cells([[0.9], [0.91], [0.9]], [0.9, 0.91, 0.9])
    assert next(r for r in rows if r.method == "ff").convergence.rising


def test_targets_are_the_datasets_fixed_ones_and_do_not_move_when_a_method_is_added():
    rows, runs = cells([[0.8, 0.9]] * 3, [0.9, 0.9, 0.9])
    for r in runs:
        r["config"]["dataset"] = {"name": "mnist", "target_accuracy": 0.98}
    fixed = numbers.fixed_targets(runs)
    assert numbers.targets_per_dataset(rows, 0.97, fixed) == {"mnist": 0.98}
    better = rows + [numbers.Row("mnist", "mlp", "z", 3, 0.999, 0.0, {}, [1, 2, 3], [0.999] * 3)]
    assert numbers.targets_per_dataset(better, 0.97, fixed) == {"mnist": 0.98}
    assert numbers.targets_per_dataset(better, 0.97, {})["mnist"] == pytest.approx(0.97 * 0.999)  # the old, moving rule


def test_cost_to_target_figure_stays_a_readable_size_when_no_cell_reaches_its_target(tmp_path):
    """Every cell short of its target and energy only as one estimate per run (the smoke run's
    case) once saved a 915 x 117,453-pixel PNG."""
    import math
    import struct

    import pandas as pd

    from benchmark.report.figures import Figures, plot_cost_to_target

    costs = pd.DataFrame([{"dataset": "digits", "method": f"m{i}", "arch": "mlp", "experiment": "smoke", "machine": "cpu", "target": 0.95,
                           "time_s": math.inf, "energy_j": math.nan} for i in range(22)])
    figs = Figures(tmp_path)
    plot_cost_to_target(costs, figs)
    width, height = struct.unpack(">II", (tmp_path / "cost_to_target.png").read_bytes()[16:24])
    assert width <= 2000 and height <= 2000, (width, height)


def test_learning_curves_get_a_panel_per_arch_and_never_average_one_method_across_experiments(tmp_path, monkeypatch):
    """A reproduction holds tens of method x arch pairs: one panel each per arch, and FF run with
    AdamW (repro_ff) and with SGD (repro_ff_sgd) on the same MLP are two lines, not one mean."""
    from benchmark.report import figures

    def run(method, arch, experiment, seed, level):
        history = [{"epoch": e, "val_accuracy": level * (1 - 0.5 / e)} for e in range(1, 6)]
        return {"dataset": "mnist", "method": method, "arch": arch, "experiment": experiment, "seed": seed,
                "metrics": {"history": history}}

    runs = [run("ff", "mlp_3x1000", "repro_ff", s, 0.98) for s in (0, 1)]
    runs += [run("ff", "mlp_3x1000", "repro_ff_sgd", s, 0.90) for s in (0, 1)]
    runs += [run("bp", "mlp_3x1000", "repro_ff", 0, 0.99), run("bp", "cnn", "repro_cafo", 0, 0.99)]
    kept = []
    monkeypatch.setattr(figures.Figures, "add", lambda self, fig, name, caption: kept.append(fig))
    figures.plot_learning_curves(runs, figures.Figures(tmp_path))
    (fig,) = kept
    panels = {ax.get_title(): ax for ax in fig.axes if ax.axison}
    assert set(panels) == {"cnn", "mlp_3x1000"}
    means = {line.get_label(): line.get_ydata() for line in panels["mlp_3x1000"].get_lines()
             if not line.get_label().startswith("_")}
    assert set(means) == {"bp (1 seed)", "ff (repro_ff) (2 seeds)", "ff (repro_ff_sgd) (2 seeds)"}
    assert means["ff (repro_ff) (2 seeds)"][-1] == pytest.approx(98 * 0.9)  # not pulled towards SGD's 90 %
    assert means["ff (repro_ff_sgd) (2 seeds)"][-1] == pytest.approx(90 * 0.9)


def test_finals_of_a_setting_the_study_no_longer_ranks_best_are_left_out_and_named():
    """A study's best changed after its finals ran (more trials, or an unstable trial ranked last):
    the new finals re-use seeds 1-3. Pooling both would count each seed twice and mix two settings."""
    def tuned(seed, number, acc, finished):
        r = final("ff", seed, [0.8, 0.85, 0.86], acc)
        return {**r, "experiment": "e", "cell": "ff__mlp__mnist", "finished_at": finished,
                "trial": {"study": "ff__mlp__mnist", "number": number, "storage": "sqlite:///x.db"}}

    old = [tuned(s, 2, 0.50, f"2026-11-01T00:0{s}:00+00:00") for s in (1, 2, 3)]
    new = [tuned(s, 7, 0.90, f"2026-11-02T00:0{s}:00+00:00") for s in (1, 2, 3)]
    records = new[:1] + old + new[1:]  # file order is not finishing order
    kept = numbers.final_runs(records)
    assert sorted(r["seed"] for r in kept) == [1, 2, 3] and {r["trial"]["number"] for r in kept} == {7}
    [row] = numbers.summarise(kept)
    assert row.acc == pytest.approx(0.90)
    note = numbers.superseded_note(records)
    assert "ff__mlp__mnist (trial 2, seeds 1 2 3)" in note
    assert numbers.superseded_note(new) is None and len(numbers.final_runs(new)) == 3
    # Another machine's study of the same name is its own study: its finals are not superseded.
    elsewhere = [{**r, "environment": {"gpu_model": "NVIDIA H200"}} for r in old]
    assert len(numbers.final_runs(new + elsewhere)) == 6


def test_bars_of_one_cell_on_two_machines_or_in_two_experiments_name_what_tells_them_apart():
    from benchmark.report.figures import row_labels, spans_decades

    labels = row_labels([("ff", "mlp", "mnist", "repro_ff", "AMD EPYC, 1 threads (CPU)"),
                         ("ff", "mlp", "mnist", "repro_ff_sgd", "AMD EPYC, 1 threads (CPU)"),
                         ("bp", "mlp", "mnist", "repro_ff", "AMD EPYC, 1 threads (CPU)"),
                         ("bp", "mlp", "mnist", "repro_ff", "Intel Xeon, 1 threads (CPU)")])
    assert labels == ["ff/mlp/mnist [repro_ff]", "ff/mlp/mnist [repro_ff_sgd]",
                      "bp/mlp/mnist [AMD EPYC, 1 threads]", "bp/mlp/mnist [Intel Xeon, 1 threads]"]
    assert len(set(labels)) == len(labels)
    assert spans_decades([5.0, 4000.0, float("inf"), float("nan")]) and not spans_decades([5.0, 400.0])


def test_cost_to_target_keeps_each_experiments_seeds_apart():
    def run(experiment, seed, epochs_to_target):
        history = [{"epoch": e, "val_accuracy": 0.99 if e >= epochs_to_target else 0.5, "train_seconds_cum": 10.0 * e}
                   for e in range(1, 6)]
        return {"dataset": "mnist", "method": "ff", "arch": "mlp", "experiment": experiment, "seed": seed,
                "status": "completed", "environment": {}, "metrics": {"history": history}}

    runs = [run("repro_ff", s, 1) for s in (0, 1)] + [run("repro_ff_sgd", s, 5) for s in (0, 1)]
    costs = numbers.cost_to_target(runs, {"mnist": 0.95})
    assert dict(zip(costs["experiment"], costs["time_s"])) == {"repro_ff": 10.0, "repro_ff_sgd": 50.0}
    assert "experiment" in numbers.costs_display(costs).columns


def test_a_workload_that_ran_one_method_only_counts_in_no_performance_profile():
    import numpy as np
    import pandas as pd

    cost = lambda dataset, machine, method, t: {"dataset": dataset, "machine": machine, "method": method,
                                                 "arch": "mlp", "experiment": "e", "time_s": t, "energy_j": np.nan}
    costs = pd.DataFrame([cost("mnist", "A", "bp", 10.0), cost("mnist", "A", "ff", 40.0),
                          cost("fashion_mnist", "A", "bp", 10.0), cost("fashion_mnist", "A", "ff", 5.0),
                          cost("mnist", "B", "ff", 99.0)])  # machine B ran FF alone: it ranks nothing
    profiles = numbers.performance_profile(costs, "time_s", np.array([1.0, 4.0]))
    assert profiles["bp"].tolist() == [0.5, 1.0] and profiles["ff"].tolist() == [0.5, 1.0]
    assert numbers.performance_profile(costs, "energy_j", np.array([1.0])) == {}


def test_the_cost_figure_draws_an_estimated_energy_hatched_and_says_so(tmp_path, monkeypatch):
    from benchmark.report import figures

    def row(method, estimated):
        return numbers.Row(dataset="mnist", arch="mlp", method=method, n=1, acc=0.9, ci=0.0, seeds=[0], accs=[0.9],
                           values={"energy_train": (100.0, estimated, "src"), "time_train": (10.0, False, "clock")})

    kept = []
    monkeypatch.setattr(figures.Figures, "add", lambda self, fig, name, caption: kept.append(fig))
    figures.plot_costs([row("bp", True), row("ff", False)], figures.Figures(tmp_path))
    energy, time = kept[0].axes[:2]
    assert [bar.get_hatch() for bar in energy.patches] == ["///", None]
    assert "hatched: estimated" in energy.get_xlabel() and "estimated" not in time.get_xlabel()


def test_the_cost_and_energy_figures_name_each_figures_source_in_their_captions(tmp_path, monkeypatch):
    from benchmark.report import figures

    def row(method, dataset, memory_source, energy_estimated):
        return numbers.Row(dataset=dataset, arch="mlp", method=method, n=1, acc=0.9, ci=0.0, seeds=[0], accs=[0.9],
                           values={"energy_train": (100.0, energy_estimated, "codecarbon_estimate" if energy_estimated else "nvml counter"),
                                   "time_train": (10.0, False, "time.perf_counter"),
                                   "peak_memory": (2.0**20, False, memory_source)})

    captions = {}
    monkeypatch.setattr(figures.Figures, "add", lambda self, fig, name, caption: captions.update({name: caption}))
    rows = [row("bp", "mnist", "process peak RSS growth", True), row("ff", "mnist", "torch allocator peak", False),
            row("bp", "digits", "process peak RSS growth", True)]
    figures.plot_costs(rows, figures.Figures(tmp_path))
    figures.plot_accuracy_vs_energy(rows, figures.Figures(tmp_path))
    costs = captions["costs"]
    assert "Training time: time.perf_counter" in costs
    # Two sources of one figure (a CPU's RSS beside a GPU's allocator) are both named; the estimate says so.
    assert "Peak memory: process peak RSS growth or torch allocator peak" in costs
    assert "Energy (train): codecarbon_estimate (estimated) or nvml counter" in costs
    # Each dataset's scatter names only its own rows' sources.
    assert "nvml counter" in captions["acc_vs_energy_mnist"]
    assert "codecarbon_estimate (estimated)" in captions["acc_vs_energy_digits"] and "nvml" not in captions["acc_vs_energy_digits"]
    to_target = pd.DataFrame([{"dataset": "mnist", "method": m, "arch": "mlp", "experiment": "", "machine": "cpu",
                               "target": 0.9, "time_s": 5.0, "energy_j": e} for m, e in (("bp", 50.0), ("ff", 80.0))])
    figures.plot_cost_to_target(to_target, figures.Figures(tmp_path))
    assert "time.perf_counter" in captions["cost_to_target"] and "NVML" in captions["cost_to_target"]


def timed_runs(bp_day: str, ff_day: str, bp_probe: float | None = None, ff_probe: float | None = None) -> list[dict]:
    """BP and FF with a training time and a peak memory, BP's runs started on bp_day, FF's on ff_day,
    each with the given speed probe (GFLOP/s; None: a record made before the probe)."""
    runs = []
    for method, day, seconds, probe in (("bp", bp_day, 10.0, bp_probe), ("ff", ff_day, 20.0, ff_probe)):
        for seed, acc in zip((1, 2, 3), (0.975, 0.976, 0.977)):
            run = final(method, seed, [0.95, 0.97, 0.975, 0.976, 0.976, 0.976], acc)
            run["started_at"] = f"{day}T10:0{seed}:00+00:00"
            if probe is not None:
                run.setdefault("environment", {})["speed_probe"] = {
                    "value": probe + seed, "unit": "GFLOP/s", "source": "fp32 matmul probe", "estimated": False}
            run["measurements"].update({
                "time_train": {"value": seconds, "unit": "s", "source": "time.perf_counter", "estimated": False},
                "peak_memory": {"value": 2**20 * seconds, "unit": "B", "source": "process RSS", "estimated": False}})
            runs.append(run)
    return runs


def test_a_speed_ratio_against_bp_runs_of_another_day_only_is_marked():
    """One machine label ran BP's same code at 25 s an epoch one day and 50 s the next (README), so a
    time (energy, emissions) ratio across days is marked ‡; memory, which the day does not change,
    is not; runs sharing a day are not marked."""
    rows = numbers.summarise(timed_runs("2026-12-06", "2026-12-07"))
    ff = numbers.summary_table(rows).set_index("method").loc["ff"]
    assert ff["Training time (s)"].endswith("(+100%‡ vs BP)") and "‡" not in ff["Peak memory (MiB)"]
    significance = numbers.significance_sentences(rows)
    glance = numbers.glance_table(rows, significance).set_index("method").loc["ff"]
    assert glance["time / BP"] == "2x‡" and "‡" not in glance["peak memory / BP"]

    rows = numbers.summarise(timed_runs("2026-12-07", "2026-12-07"))
    ff = numbers.summary_table(rows).set_index("method").loc["ff"]
    assert ff["Training time (s)"].endswith("(+100% vs BP)")
    assert numbers.glance_table(rows, numbers.significance_sentences(rows)).set_index("method").loc["ff", "time / BP"] == "2x"


def test_where_runs_carry_speed_probes_the_probes_not_the_days_decide_the_mark():
    """The probes measure the machine's speed around each run: probes 2x apart mark a ratio even
    within one day, probes that agree leave it unmarked across days, and a side without probes
    (older records) falls back to the days."""
    def marks(*args):
        rows = numbers.summarise(timed_runs(*args))
        return numbers.summary_table(rows).set_index("method").loc["ff", "Training time (s)"]

    assert marks("2026-12-07", "2026-12-07", 100.0, 50.0).endswith("(+100%‡ vs BP)")
    assert marks("2026-12-06", "2026-12-07", 100.0, 90.0).endswith("(+100% vs BP)")
    assert marks("2026-12-06", "2026-12-07", 100.0, None).endswith("(+100%‡ vs BP)")
    assert marks("2026-12-07", "2026-12-07", None, 50.0).endswith("(+100% vs BP)")


def test_provenance_gives_the_range_of_the_speed_probes_with_unit_and_source():
    speeds = numbers.provenance(timed_runs("2026-12-07", "2026-12-07", 100.0, 50.0), None)["machine speed"]
    assert "51-103 GFLOP/s over 6 runs (fp32 matmul probe)" in speeds
    older = numbers.provenance(timed_runs("2026-12-07", "2026-12-07"), None)["machine speed"]
    assert older.startswith("no speed probe in these records")
