"""Report figures: matplotlib plots of the numbers, saved as PNG and SVG and kept for embedding.

Owns every plot (accuracy vs energy with its Pareto front, learning curves, costs, cost to target,
performance profiles, Optuna's own plots) and `Figures`, which writes them beside the report.
"""
from __future__ import annotations

import base64
import io
import math
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.report.numbers import (DEPTH_COLUMNS, METRICS, Row, method_rank, natural, pareto_front, performance_profile,
                                      val_curve, with_sources)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    # A fixed salt for the SVGs' element ids (random by default), so that a report regenerated from
    # the same records is the same file, and a committed report's diff shows only what changed.
    matplotlib.rcParams["svg.hashsalt"] = "bpfree-bench"
    import matplotlib.pyplot as plt

    return plt


def method_colour(method: str):
    """One colour per method, the same in every figure and every report: the method's place in the
    registry (BP first, then by name) picks it from matplotlib's tab20, then tab20b and tab20c
    (60 colours: the registry outgrew one palette at 23 methods). A method the registry no longer
    has gets grey."""
    from benchmark import spec

    order = sorted(spec.names(), key=method_rank)
    if method not in order:
        return "0.5"
    i = order.index(method) % 60
    return _plt().get_cmap(("tab20", "tab20b", "tab20c")[i // 20])(i % 20)


def row_labels(cells: list[tuple[str, str, str, str, str]]) -> list[str]:
    """method/arch/dataset for each (method, arch, dataset, experiment, machine) bar; where one
    method x arch x dataset has several bars (several machines, or experiments of a merged report),
    those name what tells them apart, or the rows look doubled."""
    plain = [f"{m}/{a}/{d}" for m, a, d, _, _ in cells]
    experiments, machines = {}, {}
    for label, (_, _, _, experiment, machine) in zip(plain, cells):
        experiments.setdefault(label, set()).add(experiment)
        machines.setdefault(label, set()).add(machine)
    labels = []
    for label, (_, _, _, experiment, machine) in zip(plain, cells):
        tags = ([experiment] if len(experiments[label]) > 1 else []) + \
               ([machine.removesuffix(" (CPU)")] if len(machines[label]) > 1 else [])
        labels.append(f"{label} [{'; '.join(tags)}]" if tags else label)
    return labels


def spans_decades(values) -> bool:
    """Whether a bar chart needs a log axis: seconds beside hours, on a linear one the short bars vanish."""
    positive = np.asarray(values, dtype=float)
    positive = positive[np.isfinite(positive) & (positive > 0)]
    return positive.size > 1 and positive.max() > 100 * positive.min()


class Figures:
    """Saves each figure as PNG and SVG beside the report and keeps the PNG for embedding."""

    def __init__(self, out: Path):
        self.out, self.items = out, []

    def add(self, fig, name: str, caption: str) -> None:
        plt = _plt()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        fig.savefig(self.out / f"{name}.svg", bbox_inches="tight", metadata={"Date": None})  # no timestamp: see _plt
        (self.out / f"{name}.png").write_bytes(buf.getvalue())
        plt.close(fig)
        self.items.append({"name": name, "caption": caption, "data": base64.b64encode(buf.getvalue()).decode()})


def plot_accuracy_vs_energy(rows: list[Row], figs: Figures) -> None:
    """Test accuracy against training energy, one point per method x arch (x machine), with the
    Pareto front. Past a dozen points the labels would overprint one another (a reproduction has
    40 on MNIST): then only the front's points are labelled, and a legend gives each method's colour."""
    from matplotlib.lines import Line2D

    plt = _plt()
    for dataset in sorted({r.dataset for r in rows}):
        pts = [(r.values["energy_train"][0], r.acc, f"{r.method}/{r.arch}", r.values["energy_train"][1], r.method)
               for r in rows if r.dataset == dataset and "energy_train" in r.values and not math.isnan(r.acc)]
        if not pts:
            continue
        crowded = len(pts) > 12
        front = pareto_front([(p[0], p[1]) for p in pts])
        on_front = {(e, a) for e, a in front}
        fig, ax = plt.subplots(figsize=(8.4, 5.0) if crowded else (6.4, 4.2))
        for e, a, label, est, method in pts:
            ax.scatter(e, a * 100, marker="^" if est else "o", color=method_colour(method))
            if not crowded or (e, a) in on_front:
                ax.annotate(label, (e, a * 100), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.plot([f[0] for f in front], [f[1] * 100 for f in front], "k--", lw=1, label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel("training energy (J, log scale; triangles: estimated)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"Accuracy vs energy: {dataset}")
        caption = with_sources(f"Test accuracy vs training energy on {dataset}, with the Pareto front.",
                               [r for r in rows if r.dataset == dataset], ["energy_train"])
        if crowded:
            methods = sorted({p[4] for p in pts}, key=method_rank)
            handles = [Line2D([], [], marker="o", linestyle="", color=method_colour(m), label=m) for m in methods]
            ax.legend(handles=[*handles, *ax.get_legend_handles_labels()[0]], fontsize=7,
                      loc="upper left", bbox_to_anchor=(1.01, 1.0))
            caption += " Only the front's points are labelled (one point per method x architecture; the summary table names them all)."
        else:
            ax.legend(fontsize=7)
        figs.add(fig, f"acc_vs_energy_{dataset}", caption)


def plot_learning_curves(runs: list[dict], figs: Figures) -> None:
    """One figure per dataset, one panel per architecture (small multiples: a reproduction holds
    tens of method x arch pairs, which one panel and one legend cannot show), one colour per method.
    Each seed is a thin line; the thick line is the mean over seeds, up to the epoch the shortest
    seed reached (early stopping ends seeds at different epochs)."""
    plt = _plt()
    for dataset in sorted({r["dataset"] for r in runs}):
        mine = [r for r in runs if r["dataset"] == dataset and val_curve(r)]
        archs = sorted({r["arch"] for r in mine}, key=natural)
        if not archs:
            continue
        cols = min(3, len(archs))
        rows = math.ceil(len(archs) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.3 * cols, 3.3 * rows), squeeze=False)
        for ax in axes.flat[len(archs):]:
            ax.set_axis_off()
        for ax, arch in zip(axes.flat, archs):
            _curves_panel(ax, [r for r in mine if r["arch"] == arch])
            ax.set_title(arch, fontsize=9)
            ax.set_xlabel("epoch", fontsize=8)
            ax.set_ylabel("validation accuracy (%)", fontsize=8)
            ax.tick_params(labelsize=7)
        legends = [ax.get_legend_handles_labels() for ax in axes.flat[:len(archs)]]
        if max(len(labels) for _, labels in legends) <= 6:
            for ax in axes.flat[:len(archs)]:
                ax.legend(fontsize=6, loc="lower right")
        else:  # a legend of many methods would cover a panel's curves: one for the figure, beside it
            merged = {label: handle for handles, labels in legends for handle, label in zip(handles, labels)}
            fig.legend(merged.values(), merged.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 0.95))
        fig.suptitle(f"Learning curves: {dataset}")
        fig.tight_layout()
        figs.add(fig, f"learning_curves_{dataset}",
                 f"Validation accuracy per epoch on {dataset}, one panel per architecture (final runs; thin: each seed, "
                 "thick: mean over seeds up to the shortest seed's last epoch; a panel's y axis starts near its curves' "
                 "lowest point after epoch 2, so a lower first epoch or two can fall below it).")


def _curves_panel(ax, runs: list[dict]) -> None:
    """One arch's curves: a line per method (per method and experiment where one method ran in several
    experiments on this arch, e.g. FF with AdamW and with SGD, whose seeds must not be averaged)."""
    curves_of, experiments_of = {}, {}
    for r in runs:
        experiment = r.get("experiment", "")
        curves_of.setdefault((r["method"], experiment), []).append(val_curve(r))
        experiments_of.setdefault(r["method"], set()).add(experiment)
    floor = []
    for (method, experiment), curves in sorted(curves_of.items(), key=lambda kv: (method_rank(kv[0][0]), kv[0][1])):
        siblings = sorted(experiments_of[method])
        label = f"{method} ({experiment})" if len(siblings) > 1 else method
        style = ("-", "--", ":", "-.")[siblings.index(experiment) % 4]  # a method's second experiment: dashed
        colour = method_colour(method)
        for c in curves:
            ax.plot(range(1, len(c) + 1), np.array(c) * 100, style, color=colour, linewidth=0.6, alpha=0.35)
        length = min(len(c) for c in curves)
        mean = np.mean([c[:length] for c in curves], axis=0) * 100
        ax.plot(range(1, length + 1), mean, style, color=colour, linewidth=1.8, label=f"{label} ({len(curves)} seed{'' if len(curves) == 1 else 's'})")
        floor += [min(c[2:]) * 100 for c in curves if len(c) > 2]
    top = max(max(c) for cs in curves_of.values() for c in cs) * 100
    if floor:  # zoom on where the methods differ; the first epochs can sit tens of points lower
        low = min(floor)
        ax.set_ylim(low - 0.05 * max(top - low, 1.0), top + 0.05 * max(top - low, 1.0))


def plot_costs(rows: list[Row], figs: Figures) -> None:
    plt = _plt()
    keys = [m for m in METRICS if m[0] in ("energy_train", "time_train", "peak_memory", "activation_memory")]
    labels = row_labels([(r.method, r.arch, r.dataset, r.experiment, r.machine) for r in rows])
    colours = [method_colour(r.method) for r in rows]
    y = np.arange(len(labels))
    # The panels side by side share one column of labels (a reproduction has 60 rows: labels
    # repeated per panel took half of each panel's width).
    fig, axes = plt.subplots(1, len(keys), figsize=(3.0 * len(keys) + 2.5, max(2.6, 0.22 * len(labels) + 1)),
                             squeeze=False, sharey=True)
    for ax, (key, label, unit, _) in zip(axes.flat, keys):
        vals = [r.values.get(key, (np.nan,))[0] for r in rows]
        estimated = [bool(r.values.get(key, (np.nan, False))[1]) for r in rows]
        bars = ax.barh(y, vals, color=colours)
        for bar, est in zip(bars, estimated):
            if est:  # an estimate (CodeCarbon's CPU-load model) is never drawn as a measurement
                bar.set_hatch("///")
                bar.set_edgecolor("white")
        log = spans_decades(vals)
        if log:
            ax.set_xscale("log")
        notes = [unit] + (["log scale"] if log else []) + (["hatched: estimated"] if any(estimated) else [])
        ax.set_xlabel(f"{label}\n({', '.join(notes)})", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0, 0].set_yticks(y, labels)
    axes[0, 0].set_ylim(len(labels) - 0.5, -0.5)  # inverted once (the axes share it): the table's order
    fig.tight_layout()
    caption = ("Energy, training time, peak memory and activation memory (held for backward in one step) per method "
               "(mean over final seeds).")
    figs.add(fig, "costs", with_sources(caption, rows, [k[0] for k in keys]))


def plot_cost_to_target(costs: pd.DataFrame, figs: Figures) -> None:
    if costs.empty:
        return
    plt = _plt()
    labels = row_labels([(r.method, r.arch, r.dataset, r.experiment, r.machine) for r in costs.itertuples()])
    panels = [("time_s", "training time to target (s)")]
    caption = "Time and energy to reach the target accuracy (median over seeds)."
    if costs["energy_j"].isna().all():  # energy only as one estimate per run: an empty panel says nothing
        caption = ("Training time to reach the target accuracy (median over seeds); no energy panel: no run recorded "
                   "energy per epoch (only one estimate per run).")
    else:
        panels.append(("energy_j", "energy to target (J)"))
        caption += (" Energy: the hardware meter read at each epoch's end (NVML's counter or sampled power, or RAPL), "
                    "training and validation together, measured.")
    caption += " Time: the training window's wall clock (time.perf_counter), summed up to the first epoch at the target."
    y = np.arange(len(labels))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels) + 2.0, max(3.0, 0.3 * len(labels) + 1)), squeeze=False)
    for ax, (col, label) in zip(axes.flat, panels):
        values = costs[col].to_numpy(dtype=float)
        finite = np.isfinite(values) & (values > 0)
        log = spans_decades(values)
        start = values[finite].min() / 2 if log else 0.0
        ax.barh(y, np.where(finite, values - start, 0.0), left=start, color=[method_colour(m) for m in costs["method"]])
        # Categorical rows at fixed positions and limits: with no finite value at all (every cell
        # short of its target, or energy only as one estimate per run) the axes would otherwise
        # keep a 0..1 range, and the notes below, placed at row i, would stretch the saved
        # (tight-bbox) figure to tens of thousands of pixels.
        ax.set_yticks(y, labels)
        ax.set_ylim(len(labels) - 0.5, -0.5)  # inverted: the table's order, top to bottom
        if log:
            ax.set_xscale("log")
        elif not finite.any():
            ax.set_xlim(0, 1)
        for i, v in enumerate(values):
            if np.isinf(v):
                ax.text(start, i, " not reached", va="center", fontsize=7, color="crimson", clip_on=True)
            elif np.isnan(v):
                ax.text(start, i, " one estimate per run: no per-epoch energy", va="center", fontsize=7, color="grey", clip_on=True)
        ax.set_xlabel(label + (", log scale" if log else ""))
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    figs.add(fig, "cost_to_target", caption)


def plot_profiles(costs: pd.DataFrame, figs: Figures) -> None:
    """AlgoPerf-style performance profiles, a panel per cost that was measured per epoch (energy
    is often one estimate per run: then time's panel alone, and the caption says why)."""
    plt = _plt()
    taus = np.linspace(1, 4, 61)
    panels = [(what, performance_profile(costs, col, taus)) for col, what in (("time_s", "time"), ("energy_j", "energy"))]
    missing = [what for what, profiles in panels if not profiles]
    panels = [(what, profiles) for what, profiles in panels if profiles]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1.8, 3.6), squeeze=False)
    for ax, (what, profiles) in zip(axes.flat, panels):
        # Methods often share a profile (all at 0: never reached). Each later line is drawn thinner
        # on top of the earlier ones, so every colour of a shared line still shows at its edges.
        widths = np.linspace(3.5, 1.0, len(profiles))
        for (method, rho), width in zip(profiles.items(), widths):
            ax.step(taus, rho, where="post", label=method, color=method_colour(method), linewidth=width)
        ax.set_xlabel("tau (cost / best method's cost)")
        ax.set_ylabel(f"fraction of workloads ({what} to target)")
        ax.set_ylim(-0.02, 1.02)
    # One legend beside the panels: a method list inside a panel covers its lines.
    axes[0, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    caption = "Performance profiles (AlgoPerf style): " + " and ".join(f"{what}-to-target" for what, _ in panels) + "."
    if missing:
        caption += f" No {missing[0]} panel: no run measured {missing[0]} per epoch."
    figs.add(fig, "performance_profiles", caption)


def plot_depth_scaling(table: pd.DataFrame, figs: Figures) -> None:
    """Four panels against depth, one line per method: activation memory, peak memory, time per
    epoch, test accuracy. Memory and time side by side, so a memory saving's time cost shows."""
    if table.empty:
        return
    plt = _plt()
    for dataset in sorted(table["dataset"].unique()):
        part = table[table["dataset"] == dataset]
        fig, axes = plt.subplots(2, 2, figsize=(9, 6.4))
        for ax, (key, label, _) in zip(axes.flat, DEPTH_COLUMNS):
            for method in sorted(part["method"].unique(), key=method_rank):
                line = part[part["method"] == method].sort_values("depth")
                ax.plot(line["depth"], line[key], marker="o", color=method_colour(method), label=method,
                        linestyle="--" if method == "bp_checkpoint" else "-")
            ax.set_xlabel("hidden layers")
            ax.set_ylabel(label)
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted(part["depth"].unique()), [str(d) for d in sorted(part["depth"].unique())])
        axes.flat[0].legend(fontsize=7)
        fig.tight_layout()
        figs.add(fig, f"depth_scaling_{dataset}", f"Scaling with depth on {dataset}: memory, time per epoch and accuracy "
                 "against the number of hidden layers (one seed).")


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


def plot_alignment(runs: list[dict], figs: Figures) -> None:
    """One small panel per diagnosed run: each layer's cosine with BP's gradient over training."""
    from benchmark.report.numbers import diagnosed_runs

    shown = [r for r in diagnosed_runs(runs) if r["diagnostics"]["alignment"]["layers"]]
    if not shown:
        return
    plt = _plt()
    cols = min(4, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False, sharey=True)
    for ax, run in zip(axes.flat, shown):
        alignment = run["diagnostics"]["alignment"]
        layers = {name: alignment["layers"][name] for name in alignment.get("order") or alignment["layers"]}
        shades = np.linspace(0.35, 1.0, len(layers))
        for shade, (layer, series) in zip(shades, layers.items()):
            ax.plot(series["step"], series["cosine"], marker=".", color=method_colour(run["method"]), alpha=shade, label=layer)
        ax.axhline(0, color="0.7", lw=0.8)
        ax.set_title(f"{run['method']} ({run['arch']})", fontsize=9)
        ax.set_xlabel("training step", fontsize=8)
        ax.set_ylim(-1.05, 1.05)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    axes[0][0].set_ylabel("cosine with BP's gradient")
    fig.tight_layout()
    figs.add(fig, "alignment", "Alignment with BP over training: the cosine between each layer's update signal and "
             "end-to-end BP's gradient on the same batch at the same weights (darker: deeper layer).")


def plot_probes(table: pd.DataFrame, figs: Figures) -> None:
    """Per-layer read-out profile: linear-probe test accuracy against layer depth, one line per method."""
    if table.empty:
        return
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for (method, arch), part in sorted(table.groupby(["method", "arch"]), key=lambda kv: method_rank(kv[0][0])):
        mean = part.groupby("depth")["probe accuracy (%)"].mean()
        ax.plot(mean.index, mean.values, marker="o", color=method_colour(method), label=f"{method} ({arch})")
    ax.set_xlabel("layer (1 = first)")
    ax.set_ylabel("linear probe test accuracy (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    figs.add(fig, "probes", "Per-layer read-outs: where each method makes its accuracy, and whether deeper layers add to it.")
