"""Comparison reports: `python -m benchmark.report results/<experiment> [more folders] [--out DIR]`.

A source may also be a records file (`.jsonl`, or `.jsonl.gz`): the sensitivity runs kept beside
the published reproduction (docs/reproduction/sensitivity/) render the same way.

Several results folders (two experiments, or a CPU run and a GPU run) merge into one report: each
figure keeps the experiment and the machine it came from, and ratios (against BP, in the profiles)
are taken only between runs on the same machine.

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
from benchmark.errors import UserError
from benchmark.storage import recorded_storage, redact
from benchmark.report.figures import (Figures, plot_accuracy_vs_energy, plot_alignment, plot_cost_to_target, plot_costs,
                                      plot_depth_scaling, plot_learning_curves, plot_optuna, plot_probes, plot_profiles)
from benchmark.report.numbers import (TARGET_FRACTION, alignment_table, hp_matches, budget_summary, cost_to_target, costs_display, fixed_targets,
                                      failures_table, final_runs, probes_table, superseded_note, robustness_table,
                                      depth_display, depth_table, glance_table, provenance,
                                      markdown_table, reproduction, reproduction_markdown, significance_sentences, sources_table, summarise, summary_table,
                                      targets_per_dataset)
from benchmark.report.render import method_notes, render_html, write_pdf


def published_figures() -> list[dict]:
    """configs/published.yaml: every published figure the harness knows, accuracy as a fraction."""
    from omegaconf import OmegaConf

    from benchmark.config import CONFIG_DIR

    path = CONFIG_DIR / "published.yaml"
    return OmegaConf.to_container(OmegaConf.load(path))["figures"] if path.exists() else []


def records_file(source: Path) -> Path:
    """The runs.jsonl a report source names: a results folder's, or a records file itself (a
    .jsonl, or its .jsonl.gz), such as the sensitivity records kept beside a reproduction."""
    if source.is_dir():
        return source / "runs.jsonl"
    if source.is_file() and source.name.endswith((".jsonl", ".jsonl.gz")):
        return source.with_name(source.name.removesuffix(".gz"))
    raise UserError(f"{source} is not a results folder or a records file",
                    "pass folders that hold a runs.jsonl (e.g. results/smoke) or .jsonl files of records")


def read_folders(run_dirs: list[Path]) -> list[dict]:
    """Every record of every source (a folder's runs.jsonl and runs.jsonl.gz, or a records file),
    each source's runs marked with the experiment they belong to (the folder's or file's name where
    a record names none)."""
    records = []
    for run_dir in run_dirs:
        path = records_file(run_dir)
        found = results.read_records(path)
        if not found:
            raise UserError(f"no runs recorded in {path}", "run an experiment first (make bench)")
        name = run_dir.name if run_dir.is_dir() else path.stem  # results/<experiment>, or <name>.jsonl
        for r in found:
            r.setdefault("experiment", name)
        records += found
    return records


def build(run_dir: str | Path | list, out: str | Path | None = None, references: list[dict] | None = None,
          target_fraction: float = TARGET_FRACTION, pdf: bool = True, all_figures: bool = False) -> Path:
    """Render the report of the experiment(s) in `run_dir` (a folder holding runs.jsonl, a records
    file, or a list of them to merge). The reproduction table holds the published figures of the cells
    run; with `all_figures`, every published figure, those without runs marked "not run" (the
    published reproduction: a reader sees what has not been reproduced, not only what has)."""
    if not 0 < target_fraction <= 1:
        raise UserError(f"target fraction {target_fraction} is not a fraction of the best accuracy",
                        "give a value in (0, 1], e.g. --target-fraction 0.95")
    run_dirs = [Path(d) for d in (run_dir if isinstance(run_dir, (list, tuple)) else [run_dir])]
    records = read_folders(run_dirs)
    names = list(dict.fromkeys(r["experiment"] for r in records))
    experiment = names[0] if len(names) == 1 else " + ".join(names)
    out = Path(out) if out else Path("reports") / (names[0] if len(names) == 1 else "compare-" + "-".join(names))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"report folder {out} cannot be made ({err.strerror or err})",
                        "give --out a folder that can be written") from None
    if references is None:
        def covered(figure: dict) -> bool:  # some run is of the figure's cell (and variant, where it names one)
            return any((r.get("method"), r.get("arch"), r.get("dataset")) == (figure["method"], figure["arch"], figure["dataset"])
                       and hp_matches(r, figure.get("hp") or {}) for r in records)

        references = [f for f in published_figures() if all_figures or covered(f)]
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
    depths = depth_table(rows)
    depth_figures = Figures(out)
    plot_depth_scaling(depths, depth_figures)
    learning = {"alignment": alignment_table(runs), "probes": probes_table(runs), "robustness": robustness_table(runs)}
    learning_figures = Figures(out)
    plot_alignment(runs, learning_figures)
    plot_probes(learning["probes"], learning_figures)
    storage = recorded_storage(records_file(run_dirs[0]).parent, records)
    studies = sorted({(r.get("trial") or {}).get("study") for r in records} - {None})
    optuna_notes = plot_optuna(storage, studies, figs)
    summary = summary_table(rows)
    significance = significance_sentences(rows)
    costs_table = costs_display(costs)
    ctx = {
        "experiment": experiment, "summary": summary, "rows": rows, "budget": budget_summary(records),
        "significance": significance, "figures": figs.items, "depth_table": depth_display(depths),
        "depth_figures": depth_figures.items, "learning": learning, "learning_figures": learning_figures.items, "glance": glance_table(rows, significance),
        "costs_table": costs_table, "targets": targets, "target_fraction": target_fraction,
        "relative_targets": sorted(set(targets) - set(fixed)),
        "reproduction": reproduction(rows, references), "failures": failures_table(records),
        "sources": sources_table(runs), "method_notes": method_notes(sorted({r.method for r in rows})),
        "provenance": provenance(records, storage), "optuna_notes": optuna_notes,
        "superseded": superseded_note(records),
        "n_final": len(runs), "n_trials": sum(r.get("kind") == "trial" for r in records),
        "n_failed": sum(r.get("status") in ("failed", "diverged") for r in records),
    }
    summary.to_csv(out / "summary.csv", index=False)
    (out / "summary.md").write_text(markdown_table(list(summary.columns), summary.values.tolist()), encoding="utf-8")
    pd.DataFrame(significance).to_csv(out / "significance.csv", index=False)
    costs.to_csv(out / "cost_to_target.csv", index=False)
    ctx["glance"].to_csv(out / "glance.csv", index=False)
    if not depths.empty:
        depths.to_csv(out / "depth_scaling.csv", index=False)
    for name, table in learning.items():
        if not table.empty:
            table.to_csv(out / f"diagnostics_{name}.csv", index=False)
    pd.DataFrame(ctx["reproduction"]).to_csv(out / "reproduction.csv", index=False)
    if any(v.get("ours") is not None for v in ctx["reproduction"]):  # the README's table, verbatim
        (out / "reproduction.md").write_text(reproduction_markdown(ctx["reproduction"]), encoding="utf-8")
    ctx["failures"].to_csv(out / "failures.csv", index=False)
    page = redact(render_html(ctx))  # a storage URL's password never reaches the page
    (out / "index.html").write_text(page, encoding="utf-8")
    if pdf:
        write_pdf(page, out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmark.report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="+", help="the experiment's results folder (holding runs.jsonl), or a "
                        "records file (.jsonl or .jsonl.gz); several merge into one report")
    parser.add_argument("--out", help="output folder (default reports/<experiment>)")
    parser.add_argument("--target-fraction", type=float, default=TARGET_FRACTION)
    parser.add_argument("--no-pdf", action="store_true")
    parser.add_argument("--all-figures", action="store_true", help="list every published figure in the "
                        "reproduction table, those without runs as 'not run' (make repro-report)")
    args = parser.parse_args(argv)
    try:
        out = build(args.run_dir if len(args.run_dir) > 1 else args.run_dir[0], args.out, target_fraction=args.target_fraction, pdf=not args.no_pdf,
                    all_figures=args.all_figures)
    except UserError as err:
        print(f"bpfree-bench report: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"report: {out / 'index.html'}" + ("" if args.no_pdf else f" and {out / 'report.pdf'}"))

