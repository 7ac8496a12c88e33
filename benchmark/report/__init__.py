"""Comparison reports: `python -m benchmark.report results/<experiment> [--out reports/<experiment>]`.

The package is split by layer: `numbers` (statistics and tables, pure), `figures` (matplotlib),
`render` (HTML and PDF); this module is the entry point that reads the records and puts them
together.

Renders, from the experiment's runs.jsonl (and its Optuna storage when present):
  index.html   one self-contained file (figures embedded as data URIs; opens offline)
  report.pdf   the same HTML through WeasyPrint, A4
  *.png/*.svg  every figure;  *.csv  every table

What it computes:
- summary per dataset x arch: test accuracy mean +- 95% CI (Student t over the final seeds, n
  shown), energy, training time, peak memory, FLOPs, emissions, each also relative to BP on the
  same dataset and arch; an estimated figure carries a dagger.
- significance against BP: Welch's t-test (scipy.stats.ttest_ind, equal_var=False) on the final
  seeds' test accuracies, with a sentence where the difference lies inside the seed noise.
- performance profiles (as MLCommons AlgoPerf scores training algorithms): per workload
  (dataset), the target is the dataset's fixed `target_accuracy` (its YAML), else `target_fraction`
  x the best method's mean final test accuracy (said so on the page); a
  method's time (energy) to target is the median over its seeds of the cumulative training time
  (energy) at the first epoch whose validation accuracy reaches it; rho(tau) is the fraction of
  workloads where that is within tau x the best method's. Never reaching it counts as infinite.
- reproduction: the published figures (configs/published.yaml) for the cells run, beside ours,
  difference, pass/fail at the tolerance.
- provenance: hardware, packages, git sha, dataset fingerprints, budget, seeds, dates, storage.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from benchmark import results
from benchmark.storage import redact
from benchmark.report.figures import (Figures, plot_accuracy_vs_energy, plot_cost_to_target, plot_costs,
                                      plot_learning_curves, plot_optuna, plot_profiles)
from benchmark.report.numbers import (TARGET_FRACTION, budget_summary, cost_to_target, costs_display, fixed_targets, failures_table, final_runs,
                                      provenance,
                                      reproduction, significance_sentences, sources_table, summarise, summary_table,
                                      targets_per_dataset)
from benchmark.report.render import method_notes, render_html, write_pdf


def published_figures() -> list[dict]:
    """configs/published.yaml: every published figure the harness knows, accuracy as a fraction."""
    from omegaconf import OmegaConf

    from benchmark.config import CONFIG_DIR

    path = CONFIG_DIR / "published.yaml"
    return OmegaConf.to_container(OmegaConf.load(path))["figures"] if path.exists() else []


def find_storage(run_dir: Path, records: list[dict]) -> str | None:
    specs = {(r.get("trial") or {}).get("storage") for r in records} - {None}
    if specs:
        return sorted(specs)[0]
    db = run_dir / "optuna.db"
    return f"sqlite:///{db.resolve()}" if db.exists() else None


def build(run_dir: str | Path, out: str | Path | None = None, references: list[dict] | None = None,
          target_fraction: float = TARGET_FRACTION, pdf: bool = True) -> Path:
    """Render the report of the experiment in `run_dir` (the folder holding runs.jsonl)."""
    run_dir = Path(run_dir)
    records = results.read_records(run_dir / "runs.jsonl")
    if not records:
        from benchmark.errors import UserError

        raise UserError(f"no runs recorded in {run_dir / 'runs.jsonl'}", "run an experiment first (make bench)")
    experiment = records[0].get("experiment", run_dir.name)
    out = Path(out) if out else Path("reports") / experiment
    out.mkdir(parents=True, exist_ok=True)
    if references is None:
        cells = {(r.get("method"), r.get("arch"), r.get("dataset")) for r in records}
        references = [f for f in published_figures() if (f["method"], f["arch"], f["dataset"]) in cells]
    runs = final_runs(records)
    rows = summarise(runs)
    fixed = fixed_targets(records)
    targets = targets_per_dataset(rows, target_fraction, fixed)
    costs = cost_to_target(runs, targets)
    figs = Figures(out)
    plot_accuracy_vs_energy(rows, figs)
    plot_learning_curves(runs, figs)
    plot_costs(rows, figs)
    plot_cost_to_target(costs, figs)
    plot_profiles(costs, figs)
    storage = find_storage(run_dir, records)
    studies = sorted({(r.get("trial") or {}).get("study") for r in records} - {None})
    optuna_notes = plot_optuna(storage, studies, figs)
    summary = summary_table(rows)
    significance = significance_sentences(rows)
    costs_table = costs_display(costs)
    ctx = {
        "experiment": experiment, "summary": summary, "rows": rows, "budget": budget_summary(records),
        "significance": significance, "figures": figs.items,
        "costs_table": costs_table, "targets": targets, "target_fraction": target_fraction,
        "relative_targets": sorted(set(targets) - set(fixed)),
        "reproduction": reproduction(rows, references), "failures": failures_table(records),
        "sources": sources_table(runs), "method_notes": method_notes(sorted({r.method for r in rows})),
        "provenance": provenance(records, storage), "optuna_notes": optuna_notes,
        "n_final": len(runs), "n_trials": sum(r.get("kind") == "trial" for r in records),
        "n_failed": sum(r.get("status") in ("failed", "diverged") for r in records),
    }
    summary.to_csv(out / "summary.csv", index=False)
    pd.DataFrame(significance).to_csv(out / "significance.csv", index=False)
    costs.to_csv(out / "cost_to_target.csv", index=False)
    pd.DataFrame(ctx["reproduction"]).to_csv(out / "reproduction.csv", index=False)
    ctx["failures"].to_csv(out / "failures.csv", index=False)
    page = redact(render_html(ctx))  # a storage URL's password never reaches the page
    (out / "index.html").write_text(page, encoding="utf-8")
    if pdf:
        write_pdf(page, out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmark.report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="the experiment's results folder (holding runs.jsonl)")
    parser.add_argument("--out", help="output folder (default reports/<experiment>)")
    parser.add_argument("--target-fraction", type=float, default=TARGET_FRACTION)
    parser.add_argument("--no-pdf", action="store_true")
    args = parser.parse_args(argv)
    from benchmark.errors import UserError

    try:
        out = build(args.run_dir, args.out, target_fraction=args.target_fraction, pdf=not args.no_pdf)
    except UserError as err:
        print(f"bpfree-bench report: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"report: {out / 'index.html'} and {out / 'report.pdf'}")

