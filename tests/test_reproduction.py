"""Reproduction mode (issue 17): a paper's settings fixed, several distinct seeds, test accuracy per
epoch recorded but never selecting, and the committed records readable when gzipped."""
from __future__ import annotations

import gzip
import json

import pytest
from omegaconf import OmegaConf

from benchmark import config, results, runner
from benchmark import data as data_mod
from benchmark.report import numbers, published_figures
from tests.conftest import compose, graph_root

REPROS = sorted(p.stem for p in (config.CONFIG_DIR / "experiment").glob("repro_*.yaml"))


@pytest.mark.parametrize("experiment", REPROS)
def test_a_reproduction_is_composed_from_the_mode_untuned_on_distinct_seeds(experiment, tmp_path):
    raw = OmegaConf.load(config.CONFIG_DIR / "experiment" / f"{experiment}.yaml")
    assert "repro" in raw.defaults  # composed from the mode, not copied
    jobs = [j for j in config.preflight([f"experiment={experiment}", f"results_dir={tmp_path}", f"data.root={graph_root()}"])
            if j.supported]
    assert jobs and {j.cfg.mode for j in jobs} == {"run"}
    for j in jobs:  # the schedule runs to its end, unless the paper's own settings stop early
        assert j.train.patience == paper_settings(j).get("train", {}).get("patience", 0)
    figures = {(f["method"], f["arch"], f["dataset"]): f for f in published_figures()}
    for j in jobs:  # the test set after every epoch, unless the paper's figure needs no epoch but the best-validation one
        figure = figures.get((j.cfg.method.name, j.cfg.arch.name, j.cfg.dataset.name), {})
        if not j.train.test_every_epoch:
            assert paper_settings(j)["train"]["test_every_epoch"] is False
            assert figure.get("protocol", "best_val") == "best_val"
    for cell in {(j.cfg.method.name, j.cfg.arch.name, j.cfg.dataset.name) for j in jobs}:
        seeds = [j.cfg.seed for j in jobs if (j.cfg.method.name, j.cfg.arch.name, j.cfg.dataset.name) == cell]
        assert len(seeds) >= 2 and len(set(seeds)) == len(seeds)
    # every method it reproduces has its paper's figure, with how the paper read it
    for j in jobs:
        if j.cfg.method.name != "bp":
            figure = figures[(j.cfg.method.name, j.cfg.arch.name, j.cfg.dataset.name)]
            assert figure.get("protocol") in numbers.PROTOCOLS


def paper_file(name: str) -> tuple[dict, dict]:
    """(the groups it picks, the values it sets) of a configs/paper/ file as written, with the
    paper files it builds on (a plain entry of its defaults: one cell's settings for another's)
    read first, as Hydra composes them."""
    written = OmegaConf.to_container(OmegaConf.load(config.CONFIG_DIR / "paper" / f"{name}.yaml"))
    groups, values = {}, {}
    for entry in written.pop("defaults"):
        if isinstance(entry, str) and entry != "_self_":
            base_groups, base_values = paper_file(entry)
            groups.update(base_groups)
            values = OmegaConf.to_container(OmegaConf.merge(values, base_values))
        elif isinstance(entry, dict):
            groups.update({k.removeprefix("override /"): v for k, v in entry.items()})
    return groups, OmegaConf.to_container(OmegaConf.merge(values, written))


def paper_settings(job) -> dict:
    """What the job's configs/paper/ file (if any) sets."""
    [name] = [o.split("=", 1)[1] for o in job.overrides if o.startswith("paper=")] or [None]
    return paper_file(name)[1] if name else {}


def is_cell(name: str) -> bool:
    """A paper file that picks a method, an arch and a dataset is one published cell; one that does
    not is the settings several cells share (e.g. sanfiz2021_lenet), read through them."""
    return {"method", "arch", "dataset"} <= set(paper_file(name)[0])


ALL_PAPER_FILES = sorted(p.stem for p in (config.CONFIG_DIR / "paper").glob("*.yaml"))
PAPERS = [name for name in ALL_PAPER_FILES if is_cell(name)]


def test_every_shared_paper_file_is_read_by_a_cell():
    shared = [name for name in ALL_PAPER_FILES if not is_cell(name)]
    used = {entry for name in PAPERS
            for entry in OmegaConf.load(config.CONFIG_DIR / "paper" / f"{name}.yaml").defaults if isinstance(entry, str)}
    assert set(shared) <= used, f"paper files no cell composes: {sorted(set(shared) - used)}"


@pytest.fixture(scope="module")
def every_repro_job(tmp_path_factory) -> list:
    """Every job of every repro_* experiment, composed once for all the paper files' checks."""
    results = tmp_path_factory.mktemp("repro-results")
    return [j for e in REPROS for j in config.preflight([f"experiment={e}", f"results_dir={results}", f"data.root={graph_root()}"])]


@pytest.mark.parametrize("paper", PAPERS)
def test_a_paper_cell_composes_to_its_own_settings_and_is_reproduced(paper, tmp_path, every_repro_job):
    """A configs/paper/ file is one published cell: it picks the method, arch and dataset and sets
    the paper's values, which win over the experiment's; some repro_* experiment sweeps it."""
    [job] = config.preflight([f"paper={paper}", f"results_dir={tmp_path}", f"data.root={graph_root()}"])
    groups, written = paper_file(paper)
    assert (job.cfg.method.name, job.cfg.arch.name, job.cfg.dataset.name) == (groups["method"], groups["arch"], groups["dataset"])
    for key, value in written.get("method", {}).get("hp", {}).items():
        assert getattr(job.hp, key) == (pytest.approx(value) if isinstance(value, float) else value), key
    for key, value in written.get("train", {}).items():
        assert getattr(job.train, key) == value
    swept = [j for j in every_repro_job if f"paper={paper}" in j.overrides]
    assert swept, f"no repro_* experiment sweeps paper={paper}"
    # The paper's epochs, unless its experiment caps them (train.epoch_cap: a budget-limited run).
    assert {j.train.epochs for j in swept} == {min(job.train.epochs, j.train.epoch_cap or job.train.epochs) for j in swept}
    assert {j.train.test_every_epoch for j in swept} == {written.get("train", {}).get("test_every_epoch", True)}
    if groups["method"] != "bp":
        assert any((f["method"], f["arch"], f["dataset"]) == (groups["method"], groups["arch"], groups["dataset"])
                   for f in published_figures())


def test_an_axis_on_the_command_line_replaces_the_experiments_values(tmp_path):
    """`paper=glob(...) seed=1,2` runs part of a reproduction (an experiment that sweeps is a
    multirun without -m, as in Hydra): those cells and seeds, no others."""
    jobs = config.preflight(["experiment=repro_drtp", "paper=glob(frenkel2021_*_mlp_1x500_tanh_mnist)", "seed=1,2",
                             f"results_dir={tmp_path}"])
    assert sorted((j.cfg.method.name, j.cfg.seed) for j in jobs) == sorted(
        (m, s) for m in ("bp", "dfa", "drtp", "fa") for s in (1, 2))
    assert {j.cfg.arch.name for j in jobs} == {"mlp_1x500_tanh"}


def test_an_epoch_cap_cuts_every_cell_to_the_budget_that_fits_and_lifts_to_the_papers(tmp_path):
    """repro_cafo_cifar10 runs the comparison's CIFAR cells at 15 epochs: the cap survives the
    paper files (which set their own epochs), lowers each job's budget and the config its record
    keeps, never raises one, and `train.epoch_cap=null` gives back each paper's own epochs."""
    from benchmark.errors import UserError

    base = ["experiment=repro_cafo_cifar10", f"results_dir={tmp_path}", "data.download=true"]
    capped = config.preflight(base)
    assert {(j.cfg.method.name, j.train.epochs, j.cfg.train.epochs) for j in capped} == {("cafo_rand", 15, 15), ("bp", 15, 15)}
    lifted = config.preflight([*base, "train.epoch_cap=null"])
    assert {(j.cfg.method.name, j.train.epochs) for j in lifted} == {("cafo_rand", 733), ("bp", 100)}
    assert compose("method=bp", "dataset=digits", "train.epochs=3", "train.epoch_cap=15", f"results_dir={tmp_path}").train.epochs == 3
    with pytest.raises(UserError, match="train.epoch_cap=0 must be a positive integer"):
        compose("method=bp", "dataset=digits", "train.epoch_cap=0", f"results_dir={tmp_path}")


def test_per_epoch_test_accuracy_is_recorded_and_never_selects(tmp_path):
    job = compose("method=bp", "arch=mlp", "arch.widths=[32]", "dataset=digits", "train.epochs=6", "train.patience=0",
                  "train.test_every_epoch=true", "measure.emissions=false", f"results_dir={tmp_path}")
    record = runner.execute(job)
    history = record["metrics"]["history"]
    assert all(h["test_accuracy"] is not None for h in history)
    best_val_epoch = max(history, key=lambda h: h["val_accuracy"])["epoch"]
    assert record["metrics"]["best_epoch"] == best_val_epoch
    # the reported figure is the best-validation epoch's test accuracy, whatever the best test epoch was
    assert record["metrics"]["test_accuracy"] == pytest.approx(history[best_val_epoch - 1]["test_accuracy"])


def test_off_by_default_and_in_tuning(tmp_path):
    job = compose("method=bp", "arch=mlp", "arch.widths=[32]", "dataset=digits", "train.epochs=2",
                  "measure.emissions=false", f"results_dir={tmp_path}")
    assert not job.train.test_every_epoch
    record = runner.execute(job)
    assert all("test_accuracy" not in h for h in record["metrics"]["history"])


def test_gzipped_records_are_read(tmp_path):
    records = [{"kind": "run", "seed": s} for s in (0, 1)]
    with gzip.open(tmp_path / "runs.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    assert results.read_records(tmp_path / "runs.jsonl") == records
    # A run appended after the records were compressed goes to the plain file: both are read, so a
    # resumed `make repro` neither loses the committed runs nor re-runs them.
    later = {"schema_version": 1, "run_id": "later", "status": "completed", "kind": "run", "seed": 2}
    results.append(tmp_path / "runs.jsonl", later)
    assert results.read_records(tmp_path / "runs.jsonl") == [*records, later]


def test_a_batch_cut_short_resumes_without_rerunning_finished_runs(tmp_path):
    from tests.conftest import run_cli

    args = ("-m", "method=bp", "arch=mlp", "arch.widths=[32]", "dataset=digits", "train.epochs=1", "seed=0,1",
            "mode=run", "resume=true", "measure.emissions=false", f"results_dir={tmp_path}", "experiment_name=r")
    first = run_cli(*args[:6], "seed=0", *args[7:])  # the batch was stopped after seed 0
    assert first.returncode == 0, first.stderr[-2000:]
    second = run_cli(*args)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "kept bp__mlp__digits seed=0: completed earlier" in second.stdout
    records = results.read_records(tmp_path / "r" / "runs.jsonl")
    assert sorted(r["seed"] for r in records) == [0, 1]  # seed 0 once, seed 1 added
    third = run_cli(*args[:5], "train.epochs=2", *args[6:])  # a different budget is a different run
    assert third.returncode == 0
    assert len(results.read_records(tmp_path / "r" / "runs.jsonl")) == 4
    fourth = run_cli(*args[:6], "seed=0", *args[7:], "train.stop_on=val_loss")  # so is another stopping rule
    assert fourth.returncode == 0 and "kept" not in fourth.stdout
    assert len(results.read_records(tmp_path / "r" / "runs.jsonl")) == 5


def test_other_data_of_the_same_dataset_is_another_run(tmp_path):
    """A resumed batch keeps a finished run only for the same data: another held-out split, an
    augmentation (a crop padded by reflection instead of black), a resize or unstandardised pixels
    is a run of its own."""
    from tests.conftest import run_cli

    base = ["method=bp", "arch=mlp", "arch.widths=[32]", "dataset=digits", "train.epochs=1", "measure.emissions=false",
            f"results_dir={tmp_path}", "experiment_name=r"]
    done = run_cli(*base)
    assert done.returncode == 0, done.stderr[-2000:]
    [same] = config.preflight(base)
    assert runner.finished_earlier(same) is not None
    for change in ("dataset.split_seed=1", "dataset.augment=crop_flip", "dataset.resize=16", "dataset.normalise=none"):
        [job] = config.preflight([*base, change])
        assert runner.finished_earlier(job) is None, change
    [reflect] = config.preflight([*base, "dataset.augment=crop_flip_reflect"])
    assert runner.checkpointer(reflect, 0, reflect.hp).path != runner.checkpointer(same, 0, same.hp).path


def test_an_arch_setting_added_later_reads_as_its_default_in_older_records():
    """A record written before an arch kind gained a setting (a graph arch's `head`) is the run a
    job at that setting's default would make; a record at another value is another run."""
    old = {"name": "gcn", "kind": "gcn", "widths": [128, 128, 128, 128]}
    assert runner.recorded_arch(old) == {**old, "head": "linear"}
    assert runner.recorded_arch({**old, "head": "graph"})["head"] == "graph"
    assert runner.recorded_arch({"name": "x", "kind": "not-a-kind"}) == {"name": "x", "kind": "not-a-kind"}
    assert runner.recorded_arch(None) is None


@pytest.mark.parametrize("experiment", REPROS)
def test_every_committed_record_is_a_run_its_experiment_would_keep(experiment, tmp_path):
    """`make repro` resumes from the committed records: each completed run in docs/reproduction is
    what its experiment's config asks for now (same settings), so it is kept, not re-run; and a
    config that drifts from its records fails here rather than silently mixing two settings."""
    folder = config.CONFIG_DIR.parent / "docs" / "reproduction"
    records = [r for r in results.read_records(folder / experiment / "runs.jsonl")
               if r.get("kind") == "run" and r.get("status") == "completed"]
    if not records:
        pytest.skip(f"{experiment} has no committed records yet")
    # Runs on a stand-in dataset (CIFAR-10's JPEG copy, offline) were launched with `dataset=<it>`.
    # Composing them checks only that the dataset's folder exists (no image is read), so where this
    # machine has not unpacked it, an empty folder of that name under tmp_path stands in.
    stand_ins = {f["stand_in"] for f in published_figures() if f.get("stand_in")}
    launches = [[f"data.root={graph_root()}"]]  # graphs: the released splits are never downloaded
    data_root = data_mod.resolve_root(config.compose([f"experiment={experiment}"]).data.root)  # as the runs read it
    for name in sorted({r["dataset"] for r in records} & stand_ins):
        root = data_root
        if not (root / data_mod.EXPECTED_PATHS[name]).exists():
            root = tmp_path
            (root / data_mod.EXPECTED_PATHS[name]).mkdir(parents=True)
        launches.append([f"dataset={name}", f"data.root={root}"])
    jobs = [j for extra in launches
            for j in config.preflight([f"experiment={experiment}", f"results_dir={folder}", *extra]) if j.supported]
    kept = {earlier["run_id"] for j in jobs if (earlier := runner.finished_earlier(j)) is not None}
    for r in records:
        assert r["run_id"] in kept, f"{experiment}: {r['cell']} seed {r['seed']} would be re-run"


def test_the_published_table_is_regenerated_from_the_committed_records_and_is_the_readmes(tmp_path):
    """docs/reproduction/ is generated: its records alone rebuild its table (what `make
    repro-report` runs), and the README's reproduction table is that table, verbatim."""
    from benchmark import report

    published = config.CONFIG_DIR.parent / "docs" / "reproduction"
    folders = sorted(p.parent for p in published.glob("repro_*/runs.jsonl*"))
    assert folders
    report.build([str(f) for f in folders], out=tmp_path, pdf=False, all_figures=True)
    table = (tmp_path / "reproduction.md").read_text()
    assert table == (published / "report" / "reproduction.md").read_text()
    assert table.strip() in (config.CONFIG_DIR.parent / "README.md").read_text()


def test_the_untuned_families_table_is_the_reports_summary_of_its_committed_records(tmp_path):
    """docs/reproduction/untuned/ holds issue 15's families run untuned at one stated CPU budget
    (each method at its YAML defaults beside BP on the same arch): the report rebuilds their
    summary from those records alone, and the README's table of them is that summary, verbatim."""
    from benchmark import report

    untuned = config.CONFIG_DIR.parent / "docs" / "reproduction" / "untuned"
    folders = sorted(p.parent for p in untuned.glob("*/runs.jsonl*"))
    assert folders
    report.build([str(f) for f in folders], out=tmp_path, pdf=False)
    table = (tmp_path / "summary.md").read_text()
    assert table.count("\n") > 2 + len(folders)  # a header, its rule, and rows from every folder
    assert table.strip() in (config.CONFIG_DIR.parent / "README.md").read_text()
