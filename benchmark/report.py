"""Comparison reports: `python -m benchmark.report results/<experiment> [--out reports/<experiment>]`.

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
  (dataset), the target is `target_fraction` x the best method's mean final test accuracy; a
  method's time (energy) to target is the median over its seeds of the cumulative training time
  (energy) at the first epoch whose validation accuracy reaches it; rho(tau) is the fraction of
  workloads where that is within tau x the best method's. Never reaching it counts as infinite.
- reproduction: the experiment's `references` beside ours, difference, pass/fail at the tolerance.
- provenance: hardware, packages, git sha, dataset fingerprints, budget, seeds, dates, storage.
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import math
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark import results

BASELINE = "bp"
TARGET_FRACTION = 0.97


# ------------------------------------------------------------------------------------------------
# Statistics


def mean_ci95(values) -> tuple[float, float, int]:
    """Mean, half-width of the 95% confidence interval (Student t), n."""
    from scipy import stats

    v = np.asarray([x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))], dtype=float)
    n = len(v)
    if n == 0:
        return math.nan, math.nan, 0
    if n == 1:
        return float(v[0]), math.nan, 1
    half = stats.t.ppf(0.975, n - 1) * v.std(ddof=1) / math.sqrt(n)
    return float(v.mean()), float(half), n


def welch(a, b) -> float:
    """Two-sided p-value of Welch's t-test; nan where either side has fewer than 2 values."""
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(b) < 2:
        return math.nan
    if a.std() == 0 and b.std() == 0:
        return 0.0 if a.mean() != b.mean() else 1.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


# ------------------------------------------------------------------------------------------------
# Loading


def measurement(record: dict, key: str) -> tuple[float | None, bool, str | None, str | None]:
    fig = (record.get("measurements") or {}).get(key)
    if not fig or fig.get("value") is None:
        return None, False, None, None
    return fig["value"], bool(fig.get("estimated")), fig.get("source"), fig.get("unit")


def final_runs(records: list[dict]) -> list[dict]:
    """The runs reports are about: finals where the experiment was tuned, else single runs."""
    finals = [r for r in records if r.get("kind") == "final"]
    return finals or [r for r in records if r.get("kind") == "run"]


METRICS = [  # key, label, unit, scale
    ("energy_train", "Energy (train)", "J", 1.0),
    ("time_train", "Training time", "s", 1.0),
    ("peak_memory", "Peak memory", "MiB", 1 / 2**20),
    ("activation_memory", "Activation memory", "MiB", 1 / 2**20),
    ("flops_train", "FLOPs (train)", "GFLOP", 1e-9),
    ("emissions", "Emissions", "g CO2eq", 1e3),
]


@dataclass
class Row:
    dataset: str
    arch: str
    method: str
    n: int
    acc: float
    ci: float
    values: dict  # key -> (mean, estimated, source)
    seeds: list
    accs: list


def summarise(runs: list[dict]) -> list[Row]:
    rows = []
    frame = pd.DataFrame([{"dataset": r["dataset"], "arch": r["arch"], "method": r["method"], "r": r} for r in runs])
    if frame.empty:
        return rows
    for (dataset, arch, method), group in frame.groupby(["dataset", "arch", "method"], sort=True):
        recs = [r for r in group["r"] if r["status"] == "completed"]
        accs = [r["metrics"]["test_accuracy"] for r in recs if r["metrics"].get("test_accuracy") is not None]
        acc, ci, n = mean_ci95(accs)
        values = {}
        for key, _, _, scale in METRICS:
            got = [measurement(r, key) for r in recs]
            nums = [g[0] for g in got if g[0] is not None]
            if nums:
                values[key] = (float(np.mean(nums)) * scale, any(g[1] for g in got), next(g[2] for g in got if g[2]))
        rows.append(Row(dataset, arch, method, n, acc, ci, values, [r["seed"] for r in recs], accs))
    return rows


def baseline_for(rows: list[Row], row: Row) -> Row | None:
    return next((b for b in rows if b.method == BASELINE and b.dataset == row.dataset and b.arch == row.arch), None)


def relative(value: float, base: float) -> str:
    if base in (None, 0) or value is None or math.isnan(base):
        return ""
    return f"{(value / base - 1) * 100:+.0f}%"


def significance_sentences(rows: list[Row]) -> list[dict]:
    out = []
    for row in rows:
        base = baseline_for(rows, row)
        if base is None or row.method == BASELINE:
            continue
        p = welch(row.accs, base.accs)
        diff = (row.acc - base.acc) * 100
        if math.isnan(p):
            sentence = (f"{row.method} vs BP on {row.dataset}/{row.arch}: {diff:+.2f} pp; too few seeds "
                        f"(n={row.n} vs {base.n}) for Welch's t-test.")
        elif p >= 0.05:
            sentence = (f"{row.method} vs BP on {row.dataset}/{row.arch}: {diff:+.2f} pp, p={p:.3f} (Welch's t-test, "
                        f"n={row.n} vs {base.n}): the difference lies inside the seed noise; no claim either way.")
        else:
            sentence = (f"{row.method} vs BP on {row.dataset}/{row.arch}: {diff:+.2f} pp, p={p:.3g} (Welch's t-test, "
                        f"n={row.n} vs {base.n}): {'better' if diff > 0 else 'worse'} than BP beyond the seed noise at the 5% level.")
        out.append({"dataset": row.dataset, "arch": row.arch, "method": row.method, "diff_pp": diff, "p_value": p,
                    "test": "Welch's t-test (scipy.stats.ttest_ind, equal_var=False)", "sentence": sentence})
    return out


# ------------------------------------------------------------------------------------------------
# Time / energy to target and performance profiles


def to_target(run: dict, target: float) -> tuple[float, float]:
    """Cumulative (training seconds, joules) at the first epoch whose val accuracy >= target."""
    history = run["metrics"].get("history", [])
    # Energy per epoch exists only with a hardware counter (NVML, RAPL); CodeCarbon's estimate is one
    # figure per run, so energy-to-target is then unknown (nan), not "never reached" (inf).
    metered = any(h.get("energy_j_cum") for h in history)
    for h in history:
        if h.get("val_accuracy") is not None and h["val_accuracy"] >= target:
            return h.get("train_seconds_cum", math.inf), (h["energy_j_cum"] if metered else math.nan)
    return math.inf, (math.inf if metered else math.nan)


def targets_per_dataset(rows: list[Row], fraction: float) -> dict[str, float]:
    best = {}
    for r in rows:
        if not math.isnan(r.acc):
            best[r.dataset] = max(best.get(r.dataset, 0.0), r.acc)
    return {d: fraction * acc for d, acc in best.items()}


def cost_to_target(runs: list[dict], targets: dict) -> pd.DataFrame:
    """Per (dataset, method): median over its finals of time and energy to the dataset's target."""
    rows = []
    frame = pd.DataFrame([{"dataset": r["dataset"], "method": r["method"], "arch": r["arch"], "r": r} for r in runs
                          if r["status"] == "completed"])
    if frame.empty:
        return pd.DataFrame(columns=["dataset", "method", "arch", "target", "time_s", "energy_j"])
    for (dataset, method, arch), group in frame.groupby(["dataset", "method", "arch"]):
        costs = [to_target(r, targets[dataset]) for r in group["r"]]
        rows.append({"dataset": dataset, "method": method, "arch": arch, "target": targets[dataset],
                     "time_s": float(np.median([c[0] for c in costs])),
                     "energy_j": float(np.median([c[1] for c in costs]))})
    return pd.DataFrame(rows)


def performance_profile(costs: pd.DataFrame, column: str, taus: np.ndarray) -> dict[str, np.ndarray]:
    """rho_m(tau): fraction of workloads where method m's cost <= tau x the best method's."""
    if costs.empty:
        return {}
    # A method may appear on several archs of one workload (BP): its best arch counts.
    best_per = costs.groupby(["dataset", "method"])[column].min().unstack("method")
    best = best_per.min(axis=1)
    if best_per.isna().all().all():
        return {}  # not measured (energy without a hardware counter)
    profiles = {}
    for method in best_per.columns:
        ratio = best_per[method] / best
        ratio = ratio.where(np.isfinite(best_per[method]), np.inf)
        profiles[method] = np.array([(ratio <= tau).mean() for tau in taus])
    return profiles


# ------------------------------------------------------------------------------------------------
# Figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


class Figures:
    """Saves each figure as PNG and SVG beside the report and keeps the PNG for embedding."""

    def __init__(self, out: Path):
        self.out, self.items = out, []

    def add(self, fig, name: str, caption: str) -> None:
        plt = _plt()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        fig.savefig(self.out / f"{name}.svg", bbox_inches="tight")
        (self.out / f"{name}.png").write_bytes(buf.getvalue())
        plt.close(fig)
        self.items.append({"name": name, "caption": caption, "data": base64.b64encode(buf.getvalue()).decode()})


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated by another (less energy and more accuracy)."""
    front, best_acc = [], -math.inf
    for energy, acc in sorted(points):
        if acc > best_acc:
            front.append((energy, acc))
            best_acc = acc
    return front


def plot_accuracy_vs_energy(rows: list[Row], figs: Figures) -> None:
    plt = _plt()
    for dataset in sorted({r.dataset for r in rows}):
        pts = [(r.values["energy_train"][0], r.acc, f"{r.method}/{r.arch}", r.values["energy_train"][1])
               for r in rows if r.dataset == dataset and "energy_train" in r.values and not math.isnan(r.acc)]
        if not pts:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for e, a, label, est in pts:
            ax.scatter(e, a * 100, marker="^" if est else "o")
            ax.annotate(label, (e, a * 100), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front = pareto_front([(p[0], p[1]) for p in pts])
        ax.plot([f[0] for f in front], [f[1] * 100 for f in front], "k--", lw=1, label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel("training energy (J, log scale; triangles: estimated)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"Accuracy vs energy: {dataset}")
        ax.legend(fontsize=7)
        figs.add(fig, f"acc_vs_energy_{dataset}", f"Test accuracy vs training energy on {dataset}, with the Pareto front.")


def plot_learning_curves(runs: list[dict], figs: Figures) -> None:
    plt = _plt()
    for dataset in sorted({r["dataset"] for r in runs}):
        fig, ax = plt.subplots(figsize=(6, 4))
        for (method, arch) in sorted({(r["method"], r["arch"]) for r in runs if r["dataset"] == dataset}):
            curves = [[h["val_accuracy"] for h in r["metrics"].get("history", []) if h.get("val_accuracy") is not None]
                      for r in runs if r["dataset"] == dataset and r["method"] == method and r["arch"] == arch]
            curves = [c for c in curves if c]
            if not curves:
                continue
            length = min(len(c) for c in curves)
            mean = np.mean([c[:length] for c in curves], axis=0) * 100
            ax.plot(range(1, length + 1), mean, marker=".", label=f"{method}/{arch}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation accuracy (%), mean over seeds")
        ax.set_title(f"Learning curves: {dataset}")
        ax.legend(fontsize=7)
        figs.add(fig, f"learning_curves_{dataset}", f"Validation accuracy per epoch on {dataset} (final runs, mean over seeds).")


def plot_costs(rows: list[Row], figs: Figures) -> None:
    plt = _plt()
    keys = [m for m in METRICS if m[0] in ("energy_train", "time_train", "peak_memory", "activation_memory")]
    labels = [f"{r.method}/{r.arch}/{r.dataset}" for r in rows]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), max(3.0, 0.35 * len(labels) + 1)))
    for ax, (key, label, unit, _) in zip(np.atleast_1d(axes), keys):
        vals = [r.values.get(key, (np.nan,))[0] for r in rows]
        ax.barh(labels, vals)
        ax.set_xlabel(f"{label} ({unit})")
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    figs.add(fig, "costs", "Energy, training time, peak memory and activation memory (held for backward in one step) per method (mean over final seeds).")


def plot_cost_to_target(costs: pd.DataFrame, figs: Figures) -> None:
    if costs.empty:
        return
    plt = _plt()
    labels = [f"{r.method}/{r.arch}/{r.dataset}" for r in costs.itertuples()]
    fig, axes = plt.subplots(1, 2, figsize=(9, max(3.0, 0.35 * len(labels) + 1)))
    for ax, (col, label) in zip(axes, (("time_s", "training time to target (s)"), ("energy_j", "energy to target (J)"))):
        vals = costs[col].replace(np.inf, np.nan)
        ax.barh(labels, vals)
        for i, v in enumerate(costs[col]):
            if np.isinf(v):
                ax.text(0, i, " never reached", va="center", fontsize=7, color="crimson")
            elif np.isnan(v):
                ax.text(0, i, " not measured per epoch", va="center", fontsize=7, color="grey")
        ax.set_xlabel(label)
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    figs.add(fig, "cost_to_target", "Time and energy to reach the target accuracy (median over seeds).")


def plot_profiles(costs: pd.DataFrame, figs: Figures) -> None:
    plt = _plt()
    taus = np.linspace(1, 4, 61)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, (col, what) in zip(axes, (("time_s", "time"), ("energy_j", "energy"))):
        profiles = performance_profile(costs, col, taus)
        for method, rho in profiles.items():
            ax.step(taus, rho, where="post", label=method)
        if not profiles:
            ax.text(2.5, 0.5, f"no per-epoch {what} measurement", ha="center", fontsize=8, color="grey")
        ax.set_xlabel("tau (cost / best method's cost)")
        ax.set_ylabel(f"fraction of workloads ({what} to target)")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7)
    fig.tight_layout()
    figs.add(fig, "performance_profiles", "Performance profiles (AlgoPerf style): time- and energy-to-target.")


def plot_optuna(storage: str | None, studies: list[str], figs: Figures) -> list[str]:
    """History and parameter importances per study; notes where they could not be drawn."""
    notes = []
    if not storage:
        return notes
    import optuna

    plt = _plt()
    for name in studies:
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except Exception as err:  # noqa: BLE001
            notes.append(f"{name}: study not readable ({type(err).__name__})")
            continue
        trials = study.trials
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
        for state, colour in (("COMPLETE", "tab:blue"), ("PRUNED", "tab:orange"), ("FAIL", "tab:red")):
            pts = [(t.number, (t.value if t.value is not None else (max(t.intermediate_values.values()) if t.intermediate_values else 0)) * 100)
                   for t in trials if t.state.name == state]
            if pts:
                axes[0].scatter(*zip(*pts), label=state.lower(), color=colour)
        axes[0].set_xlabel("trial")
        axes[0].set_ylabel("val accuracy (%)")
        axes[0].set_title(name, fontsize=8)
        axes[0].legend(fontsize=7)
        try:
            importances = optuna.importance.get_param_importances(study)
            axes[1].barh(list(importances), list(importances.values()))
            axes[1].set_xlabel("importance (fANOVA)")
        except Exception as err:  # noqa: BLE001 - too few complete trials, a single parameter
            axes[1].text(0.5, 0.5, f"importances unavailable:\n{str(err)[:60]}", ha="center", va="center", fontsize=7)
            axes[1].set_axis_off()
        fig.tight_layout()
        figs.add(fig, f"optuna_{name}", f"Optuna history and parameter importances: {name}.")
    return notes


# ------------------------------------------------------------------------------------------------
# Reproduction and provenance


def reproduction(rows: list[Row], references: list[dict]) -> list[dict]:
    out = []
    for ref in references:
        ours = next((r for r in rows if r.dataset == ref["dataset"] and r.arch == ref["arch"] and r.method == ref["method"]), None)
        theirs = ref["test_accuracy"]
        tol = ref.get("tolerance_pp", 1.0)
        if ours is None or math.isnan(ours.acc):
            out.append({**ref, "ours": None, "diff_pp": None, "verdict": "not run"})
            continue
        diff = ours.acc * 100 - theirs
        out.append({**ref, "ours": ours.acc * 100, "diff_pp": diff, "verdict": "pass" if diff >= -tol else "fail"})
    return out


def provenance(records: list[dict], storage: str | None) -> dict:
    envs = [r.get("environment", {}) for r in records]
    first = envs[0] if envs else {}
    fingerprints = {}
    for r in records:
        d = r.get("data") or {}
        if d.get("name"):
            fingerprints[d["name"]] = {"sha256": d.get("sha256"), "canonical": d.get("canonical"),
                                       "basis": d.get("canonical_basis"), "split_seed": d.get("split_seed")}
    budgets = {repr(r.get("budget")) for r in records if r.get("budget")}
    return {
        "hardware": sorted({f"{e.get('cpu_model')} / {e.get('device')} / {e.get('gpu_model') or 'no GPU'}" for e in envs}),
        "packages": first.get("packages", {}),
        "python": first.get("python"),
        "git_sha": sorted({e.get("git_sha") or "unknown" for e in envs}),
        "fingerprints": fingerprints,
        "budget": sorted(budgets),
        "seeds": sorted({r["seed"] for r in records if r.get("kind") == "final"}),
        "dates": (min((r.get("started_at") for r in records), default=None), max((r.get("finished_at") for r in records), default=None)),
        "storage": storage,
        "dashboard": f"optuna-dashboard --host 127.0.0.1 {storage}" if storage else None,
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "n_records": len(records),
    }


# ------------------------------------------------------------------------------------------------
# Rendering


def fmt(value, digits=2) -> str:
    if value is None or (isinstance(value, float) and (math.isnan(value) or math.isinf(value))):
        return "–"
    if abs(value) >= 1e4 or (0 < abs(value) < 1e-2):
        return f"{value:.3g}"
    return f"{value:.{digits}f}"


def summary_table(rows: list[Row]) -> pd.DataFrame:
    table = []
    for r in rows:
        base = baseline_for(rows, r)
        entry = {"dataset": r.dataset, "arch": r.arch, "method": r.method, "n": r.n,
                 "test acc (%)": fmt(r.acc * 100), "95% CI (± pp)": fmt(r.ci * 100)}
        for key, label, unit, _ in METRICS:
            if key in r.values:
                value, est, _src = r.values[key]
                rel = relative(value, base.values.get(key, (None,))[0]) if base and r.method != BASELINE else ""
                entry[f"{label} ({unit})"] = fmt(value) + ("†" if est else "") + (f" ({rel} vs BP)" if rel else "")
            else:
                entry[f"{label} ({unit})"] = "–"
        table.append(entry)
    return pd.DataFrame(table)


def sources_table(runs: list[dict]) -> pd.DataFrame:
    seen = {}
    for r in runs:
        for key, fig in (r.get("measurements") or {}).items():
            seen.setdefault((key, fig.get("source"), fig.get("unit"), bool(fig.get("estimated"))), 0)
            seen[(key, fig.get("source"), fig.get("unit"), bool(fig.get("estimated")))] += 1
    return pd.DataFrame([{"figure": k[0], "source": k[1], "unit": k[2], "estimated": "yes" if k[3] else "no (measured)", "runs": n}
                         for k, n in sorted(seen.items(), key=lambda kv: kv[0][0])])


def failures_table(records: list[dict]) -> pd.DataFrame:
    bad = [r for r in records if r.get("status") in ("failed", "diverged")]
    return pd.DataFrame([{"kind": r.get("kind"), "cell": r.get("cell"), "seed": r.get("seed"),
                          "trial": (r.get("trial") or {}).get("number"), "status": r["status"], "reason": r.get("error")}
                         for r in bad])


def method_notes(methods_seen: list[str]) -> list[dict]:
    """Each method's docstring (its algorithm and its differences from the paper)."""
    from benchmark import spec as registry

    notes = []
    for name in methods_seen:
        try:
            cls = registry.get(name)
        except Exception:  # noqa: BLE001 - a method removed since the runs
            continue
        doc = sys.modules[cls.__module__].__doc__ or ""
        notes.append({"method": name, "locality": cls.locality.kind, "doc": doc.strip()})
    return notes


CSS = """
body { font-family: 'DejaVu Sans', Arial, sans-serif; font-size: 10pt; margin: 1.5em; color: #222; }
h1 { font-size: 17pt; } h2 { font-size: 13pt; border-bottom: 1px solid #ccc; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 8pt; }
th, td { border: 1px solid #bbb; padding: 2px 5px; text-align: left; vertical-align: top; }
th { background: #eee; }
img { max-width: 100%; }
figure { margin: 0.8em 0; page-break-inside: avoid; }
figcaption { font-size: 8pt; color: #555; }
pre { white-space: pre-wrap; font-size: 7.5pt; background: #f7f7f7; padding: 0.5em; }
.note { color: #555; font-size: 8.5pt; }
@page { size: A4; margin: 12mm; }
"""


def table_html(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "<p class='note'>(none)</p>"
    return frame.to_html(index=False, escape=True, border=0, na_rep="–")


def render_html(ctx: dict) -> str:
    e = html.escape
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>bpfree-bench: {e(ctx['experiment'])}</title>"
             f"<style>{CSS}</style></head><body>"]
    parts.append(f"<h1>bpfree-bench report: {e(ctx['experiment'])}</h1>")
    parts.append(f"<p class='note'>{ctx['n_final']} final runs, {ctx['n_trials']} tuning trials, "
                 f"{ctx['n_failed']} failed or diverged runs. Generated {e(ctx['provenance']['generated'])}.</p>")
    parts.append("<h2>Summary</h2><p class='note'>Test accuracy: mean over the final seeds with the half-width of its 95% "
                 "confidence interval (Student t). Costs: mean over the same runs; relative figures compare with BP on the "
                 "same dataset and architecture. † marks an estimate (see Sources).</p>")
    parts.append(table_html(ctx["summary"]))
    parts.append("<h2>Significance against BP</h2><p class='note'>Test: Welch's t-test (scipy.stats.ttest_ind, "
                 "equal_var=False) on the final seeds' test accuracies, two-sided, 5% level.</p><ul>")
    parts += [f"<li>{e(s['sentence'])}</li>" for s in ctx["significance"]] or ["<li>No method shares a cell with BP.</li>"]
    parts.append("</ul>")
    parts.append(f"<h2>Across workloads: performance profiles</h2><p class='note'>Target per dataset: "
                 f"{ctx['target_fraction']:.2f} x the best method's mean final test accuracy, checked against validation "
                 f"accuracy after each epoch. Targets: {e(', '.join(f'{k}: {v * 100:.2f}%' for k, v in ctx['targets'].items()))}.</p>")
    parts.append(table_html(ctx["costs_table"]))
    if ctx["reproduction"]:
        parts.append("<h2>Reproduction of published figures</h2>")
        parts.append(table_html(pd.DataFrame(ctx["reproduction"])))
    parts.append("<h2>Figures</h2>")
    for fig in ctx["figures"]:
        parts.append(f"<figure><img alt='{e(fig['caption'])}' src='data:image/png;base64,{fig['data']}'>"
                     f"<figcaption>{e(fig['caption'])}</figcaption></figure>")
    parts += [f"<p class='note'>{e(n)}</p>" for n in ctx["optuna_notes"]]
    parts.append("<h2>Failures</h2>")
    parts.append(table_html(ctx["failures"]))
    parts.append("<h2>Sources of every figure</h2>")
    parts.append(table_html(ctx["sources"]))
    parts.append("<h2>Methods: algorithm and differences from the papers</h2>")
    for note in ctx["method_notes"]:
        parts.append(f"<h3>{e(note['method'])} (locality: {e(note['locality'])})</h3><pre>{e(note['doc'])}</pre>")
    p = ctx["provenance"]
    parts.append("<h2>Provenance</h2><table>")
    for key in ("hardware", "python", "git_sha", "budget", "seeds", "dates", "storage", "dashboard", "n_records"):
        parts.append(f"<tr><th>{e(key)}</th><td>{e(str(p[key]))}</td></tr>")
    parts.append(f"<tr><th>packages</th><td>{e(', '.join(f'{k} {v}' for k, v in p['packages'].items()))}</td></tr>")
    for name, fp in p["fingerprints"].items():
        parts.append(f"<tr><th>data: {e(name)}</th><td>sha256 {e(str(fp['sha256']))}; canonical: {e(str(fp['canonical']))} "
                     f"({e(str(fp['basis']))}); split seed {e(str(fp['split_seed']))}</td></tr>")
    parts.append("</table></body></html>")
    return "\n".join(parts)


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
        references = next((r["config"].get("references") for r in records if (r.get("config") or {}).get("references")), []) or []
    runs = final_runs(records)
    rows = summarise(runs)
    targets = targets_per_dataset(rows, target_fraction)
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
    costs_table = costs.assign(target=lambda d: (d["target"] * 100).round(2)).rename(
        columns={"target": "target (%)", "time_s": "time to target (s)", "energy_j": "energy to target (J)"}) if not costs.empty else costs
    ctx = {
        "experiment": experiment, "summary": summary, "significance": significance, "figures": figs.items,
        "costs_table": costs_table, "targets": targets, "target_fraction": target_fraction,
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
    page = render_html(ctx)
    (out / "index.html").write_text(page, encoding="utf-8")
    if pdf:
        import logging

        from weasyprint import HTML

        logging.getLogger("weasyprint").setLevel(logging.ERROR)
        logging.getLogger("fontTools").setLevel(logging.ERROR)
        HTML(string=page, base_url=str(out)).write_pdf(out / "report.pdf")
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


if __name__ == "__main__":
    main()
