"""Reports read at a glance and merge results folders: synthetic records with known figures, two
experiments on two machines (issue 16, items 3 and 4)."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from benchmark import report
from benchmark.report import numbers
from benchmark.report.figures import method_colour

CPU = {"cpu_model": "Test CPU", "cpu_count": 2, "device": "cpu", "gpu_model": None}
GPU = {"cpu_model": "Test CPU", "cpu_count": 16, "device": "cuda:0", "gpu_model": "Test GPU"}


def run(method: str, seed: int, acc: float, seconds: float, env: dict, experiment: str, depth: int | None = None) -> dict:
    arch = "mlp" if depth is None else f"mlp_d{depth}_w256"
    return {
        "kind": "final", "status": "completed", "experiment": experiment, "method": method, "arch": arch,
        "dataset": "mnist", "seed": seed, "cell": f"{method}__{arch}__mnist", "environment": env,
        "budget": {"n_trials": 2, "max_epochs": 4, "n_seeds": 3},
        "config": {"train": {"patience": 0}, "arch": {"name": arch, "depth": depth}},
        "metrics": {"test_accuracy": acc, "epochs_run": 4, "stop_reason": "max_epochs",
                    "history": [{"epoch": i + 1, "val_accuracy": v, "test_accuracy": v - 0.001}
                                for i, v in enumerate((0.95, 0.97, 0.975, 0.975))]},
        "measurements": {"time_train": {"value": seconds, "unit": "s", "source": "meters", "estimated": False},
                         "time_total": {"value": seconds + 5, "unit": "s", "source": "meters", "estimated": False}},
    }


def write(folder, records):
    folder.mkdir(parents=True)
    (folder / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def cell(env, experiment, bp_seconds, mf_seconds, mf_accs=(0.975, 0.976, 0.974)):
    return ([run("bp", s, a, bp_seconds, env, experiment) for s, a in zip((1, 2, 3), (0.975, 0.976, 0.977))]
            + [run("mf", s, a, mf_seconds, env, experiment) for s, a in zip((1, 2, 3), mf_accs)])


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    write(root / "cpu_run", cell(CPU, "cpu_run", bp_seconds=100.0, mf_seconds=50.0))
    write(root / "gpu_run", cell(GPU, "gpu_run", bp_seconds=10.0, mf_seconds=40.0))
    out = report.build([root / "cpu_run", root / "gpu_run"], tmp_path_factory.mktemp("report"), references=[], pdf=False)
    return out


def test_merged_report_keeps_each_machine_apart_and_ratios_within_a_machine(merged):
    glance = pd.read_csv(merged / "glance.csv")
    assert len(glance) == 2
    by_machine = glance.set_index("experiment @ machine")["time / BP"]
    # MF took half of BP's time on the CPU and four times BP's on the GPU: never 50 s / 10 s.
    assert by_machine["cpu_run @ Test CPU, 2 threads (CPU)"] == "0.5x"
    assert by_machine["gpu_run @ Test GPU (GPU)"] == "4x"
    summary = pd.read_csv(merged / "summary.csv")
    assert set(summary["machine"]) == {"Test CPU, 2 threads (CPU)", "Test GPU (GPU)"}
    assert list(summary["method"]) == ["bp", "bp", "mf", "mf"]  # BP first


def test_the_first_screen_answers_before_any_detail(merged):
    page = (merged / "index.html").read_text()
    glance, summary = page.index("At a glance"), page.index("<h2>Summary</h2>")
    assert glance < summary
    first_screen = page[glance:summary]
    assert "matches BP within the seed noise" in first_screen  # MF's 97.50 vs BP's 97.60, three seeds each
    assert "Holm p = " in first_screen and "time / BP" in first_screen
    assert "budget too small to tell" in first_screen.lower()  # the reading guide says what it means


def test_command_line_merges_folders(tmp_path):
    write(tmp_path / "a", cell(CPU, "a", 100.0, 50.0))
    write(tmp_path / "b", cell(CPU, "b", 90.0, 60.0))
    report.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "out"), "--no-pdf"])
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert set(summary["experiment"]) == {"a", "b"}  # same machine, two experiments: not pooled


def test_a_records_file_renders_as_a_folder_does(tmp_path):
    # Sensitivity records are kept as single .jsonl files (plain or gzipped) beside the published
    # reproduction; the report reads them with the same figures as the folder they came from.
    import gzip

    records = cell(CPU, "a", 100.0, 50.0, mf_accs=(0.971, 0.973, 0.975))
    write(tmp_path / "a", records)
    plain = tmp_path / "sensitivity_a.jsonl"
    plain.write_text((tmp_path / "a" / "runs.jsonl").read_text())
    zipped = tmp_path / "zipped" / "sensitivity_b.jsonl.gz"
    zipped.parent.mkdir()
    zipped.write_bytes(gzip.compress((tmp_path / "a" / "runs.jsonl").read_bytes()))
    tables = {}
    for name, source in (("folder", tmp_path / "a"), ("plain", plain), ("zipped", zipped)):
        report.main([str(source), "--out", str(tmp_path / name), "--no-pdf"])
        tables[name] = pd.read_csv(tmp_path / name / "summary.csv")
    pd.testing.assert_frame_equal(tables["plain"], tables["folder"])
    pd.testing.assert_frame_equal(tables["zipped"], tables["folder"])
    mf = tables["plain"][tables["plain"]["method"] == "mf"]
    assert len(mf) == 1 and mf.iloc[0]["test acc (%)"] == pytest.approx(97.30)  # the three seeds' mean


def test_a_records_file_without_an_experiment_is_named_after_the_file(tmp_path):
    records = [{k: v for k, v in r.items() if k != "experiment"} for r in cell(CPU, "a", 100.0, 50.0)]
    source = tmp_path / "ct_100_epochs.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    report.main([str(source), "--out", str(tmp_path / "out"), "--no-pdf"])
    assert "<h1>bpfree-bench report: ct_100_epochs</h1>" in (tmp_path / "out" / "index.html").read_text()


def test_a_file_that_is_not_records_is_one_clear_error(tmp_path, capsys):
    other = tmp_path / "notes.txt"
    other.write_text("not records")
    with pytest.raises(SystemExit) as stop:
        report.main([str(other), "--no-pdf", "--out", str(tmp_path / "out")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "notes.txt is not a results folder or a records file" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_missing_folder_is_one_clear_error(tmp_path, capsys):
    write(tmp_path / "a", cell(CPU, "a", 100.0, 50.0))
    with pytest.raises(SystemExit) as stop:
        report.main([str(tmp_path / "a"), str(tmp_path / "nope"), "--no-pdf", "--out", str(tmp_path / "out")])
    assert stop.value.code == 2
    assert "nope is not a results folder" in capsys.readouterr().err


@pytest.mark.parametrize("bad, message", [
    (["--target-fraction", "1.5"], "target fraction 1.5 is not a fraction"),
    (["--target-fraction", "0"], "target fraction 0.0 is not a fraction"),
    (["--out", "{blocker}/out"], "cannot be made"),
])
def test_a_bad_option_is_one_clear_error_and_writes_nothing(bad, message, tmp_path, capsys):
    write(tmp_path / "a", cell(CPU, "a", 100.0, 50.0))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    options = [option.format(blocker=blocker) for option in bad]
    if "--out" not in options:
        options += ["--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as stop:
        report.main([str(tmp_path / "a"), "--no-pdf", *options])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_one_colour_per_method_in_a_stable_order():
    assert method_colour("bp") == method_colour("bp")
    colours = {m: method_colour(m) for m in ("bp", "ff", "mf", "cafo_rand", "pepita", "bp_checkpoint")}
    assert len(set(colours.values())) == len(colours)
    assert sorted(["mf", "bp", "ff"], key=numbers.method_rank) == ["bp", "ff", "mf"]


def test_reproduction_reads_ours_the_papers_way_and_compares_like_with_like():
    runs = cell(CPU, "repro", 10.0, 10.0, mf_accs=(0.980, 0.981, 0.979))
    rows = numbers.summarise(runs)
    refs = [{"method": "mf", "arch": "mlp", "dataset": "mnist", "test_accuracy": 0.976, "tolerance": 0.005,
             "source": "x", "protocol": "best_test_epoch"},
            {"method": "mf", "arch": "mlp", "dataset": "mnist", "test_accuracy": 0.985, "tolerance": 0.005,
             "source": "y", "protocol": "final_epoch"}]
    best_test, final = numbers.reproduction(rows, refs)
    assert best_test["ours_protocol"] == pytest.approx(0.974)  # max of the per-epoch test accuracies
    assert best_test["ours"] == pytest.approx(0.980)  # the harness's own figure is kept beside it
    assert best_test["verdict"].startswith("within tolerance (-0.20 pp")
    assert final["verdict"] == "below by 1.10 pp"
    assert "above the paper" not in best_test["verdict"]
    far_above = {**refs[0], "test_accuracy": 0.960, "protocol": "best_val"}  # ours 0.980: 2 pp above, tolerance 0.5
    [above] = numbers.reproduction(rows, [far_above])
    assert above["verdict"].startswith("within tolerance (+2.00 pp") and "above the paper by more than that" in above["verdict"]
    # A known reason for a shortfall is said beside it, and only where ours is below.
    [explained] = numbers.reproduction(rows, [{**refs[1], "why_below": "its rate is not published"}])
    assert explained["verdict"] == "below by 1.10 pp: its rate is not published"
    [kept] = numbers.reproduction(rows, [{**refs[0], "why_below": "its rate is not published"}])
    assert "not published" not in kept["verdict"]


def test_a_paper_that_kept_its_lowest_validation_loss_is_read_at_that_epoch():
    """protocol best_val_loss (CCL's reference): the test accuracy of the first epoch with the
    lowest validation loss, not of the best validation accuracy."""
    runs = cell(CPU, "repro", 10.0, 10.0)
    for r in runs:
        for h, loss in zip(r["metrics"]["history"], (0.30, 0.20, 0.25, 0.20)):
            h["val_loss"] = loss
    rows = [row for row in numbers.summarise(runs) if row.method == "mf"]
    figure = {"method": "mf", "arch": "mlp", "dataset": "mnist", "test_accuracy": 0.975, "tolerance": 0.005,
              "source": "x", "protocol": "best_val_loss"}
    [v] = numbers.reproduction(rows, [figure])
    assert v["ours_protocol"] == pytest.approx(0.969)  # epoch 2's test accuracy (0.97 - 0.001), not epoch 3's
    assert v["verdict"].startswith("below by 0.60 pp")
    assert "| 96.90 % (best val loss) |" in numbers.reproduction_markdown([v])


def test_a_figure_the_project_cannot_read_shows_ours_with_no_verdict():
    """A paper with a figure for the cell that no copy held here shows (CCL's Table 1 is an image):
    the row still shows ours, read both ways, says why there is no figure, and judges nothing."""
    rows = [row for row in numbers.summarise(cell(CPU, "repro", 10.0, 10.0)) if row.method == "mf"]
    figure = {"method": "mf", "arch": "mlp", "dataset": "mnist", "test_accuracy": None, "tolerance": 0.005,
              "source": "x", "protocol": "final_epoch", "not_held": "its table is an image"}
    [v] = numbers.reproduction(rows, [figure])
    assert v["verdict"] == "no verdict: the paper's figure is not held here (its table is an image)"
    assert v["diff_pp"] is None and v["ours"] == pytest.approx(0.975) and v["ours_protocol"] == pytest.approx(0.974)
    line = numbers.reproduction_markdown([v]).splitlines()[-1]
    assert line.startswith("| mf | mnist | mlp | not held (x; final epoch) | 97.50 ± ")
    assert numbers.reproduction_display([v])["published (%)"].tolist() == ["not held"]


def test_runs_on_a_stand_in_dataset_are_shown_beside_the_figure_never_judged():
    """CIFAR-10 is only to be had here as a JPEG copy: runs on it sit beside the paper's CIFAR-10
    figure on a row that names the stand-in, with the difference but no verdict, while runs on the
    paper's own data are judged as usual."""
    def on(dataset, records):
        return [{**r, "dataset": dataset, "cell": f"{r['method']}__mlp__{dataset}"} for r in records]

    jpeg = on("cifar10_jpeg", cell(CPU, "repro", 10.0, 10.0, mf_accs=(0.60, 0.61, 0.62)))
    canonical = on("cifar10", cell(CPU, "repro", 10.0, 10.0, mf_accs=(0.62, 0.625, 0.63)))
    figure = {"method": "mf", "arch": "mlp", "dataset": "cifar10", "test_accuracy": 0.6234, "tolerance": 0.01,
              "source": "x", "protocol": "final_epoch", "stand_in": "cifar10_jpeg"}
    [stand_in] = numbers.reproduction(numbers.summarise([r for r in jpeg if r["method"] == "mf"]), [figure])
    assert stand_in["verdict"].startswith("no verdict: ours on cifar10_jpeg, a stand-in for the paper's cifar10 (")
    assert "within tolerance" not in stand_in["verdict"] and "below" not in stand_in["verdict"]
    assert stand_in["ours"] == pytest.approx(0.61)
    table = numbers.reproduction_markdown([stand_in])
    assert "| mf | cifar10_jpeg (stand-in for cifar10) | mlp |" in table
    both = numbers.reproduction(numbers.summarise([r for r in jpeg + canonical if r["method"] == "mf"]), [figure])
    verdicts = {v["ran_on"]: v["verdict"] for v in both}
    assert verdicts["cifar10"].startswith("within tolerance")
    assert verdicts["cifar10_jpeg"].startswith("no verdict")
    # Without `stand_in`, a figure never takes runs on other data: it stays "not run".
    [alone] = numbers.reproduction(numbers.summarise(jpeg), [{**figure, "stand_in": None}])
    assert alone["verdict"] == "not run"



def test_runs_capped_below_the_papers_epochs_are_flagged_budget_limited_never_below():
    """Where a paper's schedule does not fit the machine, its runs are capped (`train.epochs=N`):
    every such row says so, beside the paper's epoch budget, and a shortfall at the cap is no
    "below" verdict. Runs given the paper's full budget are judged as usual."""
    def budget(records, epochs):
        return [{**r, "budget": {"epochs": epochs}} for r in records if r["method"] == "mf"]

    runs = cell(CPU, "repro", 10.0, 10.0, mf_accs=(0.960, 0.961, 0.962))  # 2 pp below the figure
    figure = {"method": "mf", "arch": "mlp", "dataset": "mnist", "test_accuracy": 0.981, "tolerance": 0.005,
              "epochs": 700, "source": "x", "protocol": "best_val"}
    [capped] = numbers.reproduction(numbers.summarise(budget(runs, 4)), [figure])
    assert capped["budget_limited"] and capped["paper_epochs"] == 700
    assert capped["verdict"] == "no verdict, budget-limited: at most 4 of the paper's 700 epochs (-2.00 pp at that budget)"
    assert "| 1 2 3; 4 (cap 4 of 700); Test CPU" in numbers.reproduction_markdown([capped])
    [reached] = numbers.reproduction(numbers.summarise(budget(runs, 4)), [{**figure, "test_accuracy": 0.960}])
    assert reached["verdict"].startswith("within tolerance (+0.10 pp")
    assert reached["verdict"].endswith("; budget-limited: at most 4 of the paper's 700 epochs")
    [full] = numbers.reproduction(numbers.summarise(budget(runs, 700)), [figure])
    assert not full["budget_limited"] and full["verdict"] == "below by 2.00 pp" and full["epochs"] == "4"
    # Tuned runs have no fixed epoch budget: never flagged.
    [tuned] = numbers.reproduction(numbers.summarise([r for r in runs if r["method"] == "mf"]), [figure])
    assert not tuned["budget_limited"]
def test_depth_scaling_table_one_line_per_method_and_depth():
    runs = [run(m, 0, 0.97, 10.0 * d, CPU, "depth_scaling", depth=d) for m in ("bp", "ff") for d in (2, 4, 8)]
    table = numbers.depth_table(numbers.summarise(runs))
    assert list(table["method"]) == ["bp"] * 3 + ["ff"] * 3
    assert list(table["depth"]) == [2, 4, 8, 2, 4, 8]
    assert list(table["epoch_s"])[:3] == [5.0, 10.0, 20.0]  # time_train / epochs_run
    assert numbers.depth_table(numbers.summarise(runs[:1])).empty


def test_same_experiment_on_two_machines_is_compared_within_each_machine(tmp_path):
    # The usual case: `make bench` on a laptop and on a GPU box, the same experiment name in both.
    write(tmp_path / "laptop" / "default", cell(CPU, "default", bp_seconds=100.0, mf_seconds=50.0))
    write(tmp_path / "gpu" / "default", cell(GPU, "default", bp_seconds=10.0, mf_seconds=40.0))
    out = report.build([tmp_path / "laptop" / "default", tmp_path / "gpu" / "default"], tmp_path / "out",
                       references=[], pdf=False)
    glance = pd.read_csv(out / "glance.csv").set_index("experiment @ machine")["time / BP"]
    assert glance["default @ Test CPU, 2 threads (CPU)"] == "0.5x"
    assert glance["default @ Test GPU (GPU)"] == "4x"


def test_a_published_figure_without_runs_keeps_its_row_as_not_run(tmp_path, monkeypatch):
    """The published reproduction table lists every figure (`--all-figures`): one nobody ran says
    "not run" instead of vanishing, so the table also says what is still to reproduce."""
    runs = cell(CPU, "repro", 10.0, 10.0, mf_accs=(0.980, 0.981, 0.979))
    ran = {"method": "mf", "arch": "mlp", "dataset": "mnist", "test_accuracy": 0.98, "source": "x"}
    unrun = {"method": "ff", "arch": "mlp_4x2000", "dataset": "mnist", "test_accuracy": 0.9842, "source": "y"}
    table = numbers.reproduction_markdown(numbers.reproduction(numbers.summarise(runs), [ran, unrun]))
    [ff_row] = [line for line in table.splitlines() if line.startswith("| ff |")]
    assert ff_row.endswith("| not run |") and "98.42 % (y; best val)" in ff_row
    assert "| mf |" in table
    # The CLI: only with --all-figures does a figure for a cell nobody ran reach the table.
    folder = tmp_path / "repro"
    folder.mkdir()
    (folder / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    monkeypatch.setattr(report, "published_figures", lambda: [ran, unrun])
    report.main([str(folder), "--no-pdf", "--out", str(tmp_path / "some")])
    assert "| ff |" not in (tmp_path / "some" / "reproduction.md").read_text()
    report.main([str(folder), "--no-pdf", "--all-figures", "--out", str(tmp_path / "all")])
    assert "| ff | mnist | mlp_4x2000 |" in (tmp_path / "all" / "reproduction.md").read_text()


def test_a_figure_for_one_optimiser_compares_only_that_optimisers_runs():
    """One cell, two published figures (the comparison's FF with AdamW and with SGD): each holds
    for the runs with its `hp`, so neither is compared with the other optimiser's runs, and a
    variant nobody ran says "not run" even though its cell has runs."""
    runs = cell(CPU, "repro", 10.0, 10.0, mf_accs=(0.980, 0.981, 0.979))
    for r in runs:
        r.setdefault("hp", {})["optimizer"] = "adamw" if r["method"] == "mf" else "adam"
    adamw = {"method": "mf", "arch": "mlp", "dataset": "mnist", "test_accuracy": 0.98, "source": "AdamW",
             "hp": {"optimizer": "adamw"}}
    sgd = {"method": "mf", "arch": "mlp", "dataset": "mnist", "test_accuracy": 0.97, "source": "SGD",
           "hp": {"optimizer": "sgd"}}
    verdicts = {v["source"]: v for v in numbers.reproduction(numbers.summarise(runs), [adamw, sgd])}
    assert verdicts["AdamW"]["n"] == 3 and verdicts["AdamW"]["ours"] == pytest.approx(0.980)
    assert verdicts["SGD"]["verdict"] == "not run" and verdicts["SGD"]["ours"] is None
    # one run switches to SGD: it alone is the SGD figure's, and the AdamW figure keeps the other two
    runs[3]["hp"]["optimizer"] = "sgd"
    verdicts = {v["source"]: v for v in numbers.reproduction(numbers.summarise(runs), [adamw, sgd])}
    assert verdicts["SGD"]["n"] == 1 and verdicts["SGD"]["ours"] == pytest.approx(runs[3]["metrics"]["test_accuracy"])
    assert verdicts["AdamW"]["n"] == 2


def test_a_report_lists_only_the_variants_its_runs_cover(tmp_path, monkeypatch):
    """Without --all-figures a report shows the figures of what it ran: the AdamW figure of a cell
    run with AdamW, not the same cell's SGD figure nobody ran."""
    runs = cell(CPU, "repro", 10.0, 10.0, mf_accs=(0.980, 0.981, 0.979))
    for r in runs:
        r.setdefault("hp", {})["optimizer"] = "adamw"
    figures = [{"method": "mf", "arch": "mlp", "dataset": "mnist", "test_accuracy": 0.98, "source": src,
                "hp": {"optimizer": opt}} for src, opt in (("AdamW", "adamw"), ("SGD", "sgd"))]
    folder = tmp_path / "repro"
    folder.mkdir()
    (folder / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    monkeypatch.setattr(report, "published_figures", lambda: figures)
    report.main([str(folder), "--no-pdf", "--out", str(tmp_path / "some")])
    table = (tmp_path / "some" / "reproduction.md").read_text()
    assert "(AdamW; best val)" in table and "SGD" not in table
    report.main([str(folder), "--no-pdf", "--all-figures", "--out", str(tmp_path / "all")])
    assert "(SGD; best val)" in (tmp_path / "all" / "reproduction.md").read_text()


def test_a_reproductions_seeds_on_two_machines_pool_into_one_row_costs_stay_apart():
    """A paper's figure is compared with all of an experiment's seeds, wherever each ran (accuracy
    belongs to the method and the seed); the machine column names each machine's seeds. Costs stay
    per machine, and a seed run on both machines keeps the rows apart (it would count twice)."""
    figure = {"method": "mf", "arch": "mlp", "dataset": "mnist", "test_accuracy": 0.975, "tolerance": 0.005,
              "source": "x", "protocol": "best_val"}
    laptop = [r for r in cell(CPU, "repro", 10.0, 50.0, mf_accs=(0.970, 0.972, 0.0)) if r["seed"] in (1, 2)]
    gpu = [r for r in cell(GPU, "repro", 1.0, 4.0, mf_accs=(0.0, 0.0, 0.980)) if r["seed"] == 3]
    rows = numbers.summarise(laptop + gpu)
    assert len([r for r in rows if r.method == "mf"]) == 2  # the cost rows: one per machine
    [pooled] = numbers.reproduction(rows, [figure])
    assert pooled["n"] == 3 and pooled["seeds"] == "1 2 3"
    assert pooled["ours"] == pytest.approx((0.970 + 0.972 + 0.980) / 3)
    assert pooled["machine"] == "Test CPU, 2 threads (CPU): seeds 1 2; Test GPU (GPU): seed 3"
    # Seed 3 also on the laptop: the two machines' rows are not pooled.
    again = [r for r in cell(CPU, "repro", 10.0, 50.0, mf_accs=(0.0, 0.0, 0.974)) if r["seed"] == 3 and r["method"] == "mf"]
    apart = numbers.reproduction(numbers.summarise(laptop + gpu + again), [figure])
    assert sorted(r["n"] for r in apart) == [1, 3]
    assert {r["machine"] for r in apart} == {"Test CPU, 2 threads (CPU)", "Test GPU (GPU)"}
    # Another experiment's seeds are never pooled in.
    other = [{**r, "experiment": "other"} for r in gpu]
    assert sorted(r["n"] for r in numbers.reproduction(numbers.summarise(laptop + other), [figure])) == [1, 2]
