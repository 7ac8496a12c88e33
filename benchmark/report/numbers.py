"""Report numbers: pure functions from run records to statistics and tables (no matplotlib, no HTML).

Owns: the confidence interval (Student t over the final seeds), Welch's test against BP, the
summary rows per dataset x arch x method, time/energy to target and performance profiles, the
reproduction verdicts, provenance, and the formatted tables the renderer prints.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from benchmark.results import climbed, loss_rise

BASELINE = "bp"
TARGET_FRACTION = 0.97


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


def machine_of(record: dict) -> str:
    """The hardware a run's figures come from: the GPU where it ran on one, else the CPU model and
    its thread count. Costs are compared only between runs on the same machine."""
    env = record.get("environment") or {}
    if env.get("gpu_model"):
        return f"{env['gpu_model']} (GPU)"
    return f"{env.get('cpu_model') or 'unknown CPU'}, {env.get('cpu_count') or '?'} threads (CPU)"


def natural(text: str) -> list:
    """Sort key that orders embedded numbers by value: mlp_d2 before mlp_d16."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def method_rank(name: str) -> tuple[int, str]:
    """The one order methods appear in everywhere: BP first, then by name."""
    return (0 if name == BASELINE else 1, name)


def final_runs(records: list[dict]) -> list[dict]:
    """The runs reports are about: finals where the experiment was tuned (those of each study's
    current best setting: see superseded_finals), else single runs."""
    finals = [r for r in records if r.get("kind") == "final"]
    if not finals:
        return [r for r in records if r.get("kind") == "run"]
    left_out = {id(r) for r in superseded_finals(finals)}
    return [r for r in finals if id(r) not in left_out]


def _study_of(final: dict) -> tuple:
    trial = final.get("trial") or {}
    return final.get("experiment"), trial.get("study") or final.get("cell"), trial.get("storage"), machine_of(final)


def superseded_finals(records: list[dict]) -> list[dict]:
    """Finals of a setting their study no longer calls best. A study's best can change after its
    finals ran (a larger tuning budget, or tuning's rule ranking a trial whose loss climbed last),
    and its new finals re-use the same seeds: pooling both would count each seed twice and mix two
    settings in one mean. The current setting is the trial of the study's most recently finished
    final."""
    finals = sorted((r for r in records if r.get("kind") == "final"), key=lambda r: r.get("finished_at") or "")
    current = {_study_of(r): (r.get("trial") or {}).get("number") for r in finals}  # the latest wins
    return [r for r in finals if (r.get("trial") or {}).get("number") != current[_study_of(r)]]


def superseded_note(records: list[dict]) -> str | None:
    """One line naming the finals left out of the report (superseded_finals), or None."""
    left_out: dict = {}
    for r in superseded_finals(records):
        left_out.setdefault((r.get("cell"), (r.get("trial") or {}).get("number")), []).append(r.get("seed"))
    if not left_out:
        return None
    parts = [f"{cell} (trial {number}, seeds {' '.join(str(s) for s in sorted(seeds))})" for (cell, number), seeds in sorted(left_out.items(), key=str)]
    return ("Left out: the final runs of a setting their study no longer ranks best, since newer finals of the "
            "current best setting were run: " + "; ".join(parts) + ".")


METRICS = [  # key, label, unit, scale
    ("energy_train", "Energy (train)", "J", 1.0),
    ("time_train", "Training time", "s", 1.0),
    ("peak_memory", "Peak memory", "MiB", 1 / 2**20),
    ("activation_memory", "Activation memory", "MiB", 1 / 2**20),
    ("flops_train", "FLOPs (train)", "GFLOP", 1e-9),
    ("emissions", "Emissions", "g CO2eq", 1e3),
]


def with_sources(caption: str, rows: list[Row], keys: list[str]) -> str:
    """The caption, then one sentence naming where each plotted figure came from ("Sources: Peak
    memory: process peak RSS growth ...; ..."), so a figure carries its source as the tables do,
    not only its unit. A figure whose rows came from several sources (a CPU's RSS beside a GPU's
    allocator) lists each; an estimated one says so. No rows with those figures: the caption alone."""
    parts = []
    for key, label, _, _ in METRICS:
        if key not in keys:
            continue
        seen = {}
        for r in rows:
            if key in r.values:
                _, est, src = r.values[key]
                seen.setdefault(f"{src or 'unknown source'}{' (estimated)' if est else ''}", None)
        if seen:
            parts.append(f"{label}: {' or '.join(seen)}")
    return f"{caption} Sources: {'; '.join(parts)}." if parts else caption


@dataclass(frozen=True)
class Convergence:
    """Whether a cell's validation accuracy had stopped rising when its budget ran out, and whether
    its training was stable (`unstable`: the runs whose training loss rose, and stayed, more than
    UNSTABLE_RISE times its first epoch's: results.loss_rise).

    The rule: for each completed run, fit a line (least squares) to its validation accuracy over
    the final third of its epochs (at least the last 2) and take the rise that line makes across
    that window. The cell is still rising when the mean rise over its seeds exceeds the seed noise:
    the one-sided 95% Student-t bound of that mean (sd / sqrt(n) x t(0.95, n-1)), and at least
    0.1 pp. A run with a single epoch cannot show a trend and counts as still rising: one epoch
    is no evidence of convergence."""

    rising: bool
    rise_pp: float  # mean fitted rise over the window, percentage points
    window: int  # epochs in the window (the longest over the seeds)
    noise_pp: float  # what the rise had to exceed
    unstable: tuple = ()  # (seed, rise) for each run whose training loss climbed (results.climbed)

    @property
    def settled(self) -> bool:
        """Whether the cell's figure can carry a claim: its curve had stopped rising and its training was stable."""
        return not self.rising and not self.unstable

    def unstable_seeds(self) -> str:
        """The unstable runs and their rises, e.g. "seed 1: 22.6x"."""
        return ", ".join(f"seed {seed}: {rise:.3g}x" for seed, rise in self.unstable)

    def phrase(self) -> str:
        if self.unstable:
            return f"unstable: training loss rose above its first epoch's mean ({self.unstable_seeds()})"
        return self.curve_phrase()

    def curve_phrase(self) -> str:
        if not self.rising:
            return "converged at this budget"
        if self.window < 2:
            return "not converged at this budget: one epoch shows no trend"
        return (f"not converged at this budget: validation accuracy still rising, {self.rise_pp:+.2f} pp over "
                f"its last {self.window} epochs")


MIN_RISE_PP = 0.1


def window_rise(curve: list[float]) -> tuple[float, int]:
    """Fitted rise (accuracy units) over the final third of `curve` (at least its last 2 points)."""
    k = max(2, math.ceil(len(curve) / 3))
    tail = np.asarray(curve[-k:], float)
    if len(tail) < 2:
        return math.inf, len(tail)
    slope = np.polyfit(np.arange(len(tail)), tail, 1)[0]
    return float(slope * (len(tail) - 1)), len(tail)


def val_curve(run: dict) -> list[float]:
    """A run's validation accuracy per epoch (epochs without one left out)."""
    return [h["val_accuracy"] for h in (run.get("metrics") or {}).get("history", []) if h.get("val_accuracy") is not None]


def convergence(runs: list[dict]) -> Convergence:
    """The cell's Convergence from its completed runs' validation curves and training losses (see the class)."""
    convergence = curve_convergence(runs)
    unstable = tuple((r["seed"], rise) for r in runs if climbed(rise := loss_rise(r)))
    return replace(convergence, unstable=unstable) if unstable else convergence


def curve_convergence(runs: list[dict]) -> Convergence:
    """Convergence judged on the validation curves alone."""
    from scipy import stats

    rises, windows = [], []
    for r in runs:
        curve = val_curve(r)
        if curve:
            rise, k = window_rise(curve)
            rises.append(rise)
            windows.append(k)
    if not rises:
        return Convergence(False, 0.0, 0, MIN_RISE_PP)
    if any(math.isinf(x) for x in rises):
        return Convergence(True, math.nan, max(windows), MIN_RISE_PP)
    v = np.asarray(rises) * 100
    noise = stats.t.ppf(0.95, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else 0.0
    noise = max(float(noise), MIN_RISE_PP)
    return Convergence(bool(v.mean() > noise), float(v.mean()), max(windows), noise)


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
    convergence: Convergence = Convergence(False, 0.0, 0, MIN_RISE_PP)
    experiment: str = ""
    machine: str = ""
    runs: list = field(default_factory=list, repr=False)  # the completed runs behind the row


def summarise(runs: list[dict], pool_machines: bool = False) -> list[Row]:
    """One row per dataset x arch x method x experiment x machine (a merged report keeps each
    experiment's and each machine's runs apart), in the report's one order (`method_rank`).
    With `pool_machines`, one row per dataset x arch x method x experiment whatever the machines
    (for accuracy only: see `pooled_across_machines`), its `machine` naming each one's seeds."""
    rows = []
    frame = pd.DataFrame([{"dataset": r["dataset"], "arch": r["arch"], "method": r["method"],
                           "experiment": r.get("experiment", ""), "machine": "" if pool_machines else machine_of(r),
                           "r": r} for r in runs])
    if frame.empty:
        return rows
    keys = ["dataset", "arch", "method", "experiment", "machine"]
    for (dataset, arch, method, experiment, machine), group in frame.groupby(keys, sort=True):
        recs = [r for r in group["r"] if r["status"] == "completed"]
        machine = machine or machines_with_seeds(recs)
        accs = [r["metrics"]["test_accuracy"] for r in recs if r["metrics"].get("test_accuracy") is not None]
        acc, ci, n = mean_ci95(accs)
        values = {}
        for key, _, _, scale in METRICS:
            got = [measurement(r, key) for r in recs]
            nums = [g[0] for g in got if g[0] is not None]
            if nums:
                values[key] = (float(np.mean(nums)) * scale, any(g[1] for g in got), next(g[2] for g in got if g[2]))
        rows.append(Row(dataset, arch, method, n, acc, ci, values, [r["seed"] for r in recs], accs, convergence(recs),
                        experiment, machine, recs))
    return sorted(rows, key=lambda r: (r.dataset, natural(r.arch), method_rank(r.method), r.experiment, r.machine))


def machines_with_seeds(runs: list[dict]) -> str:
    """The machine the runs ran on; where they ran on several, each with its seeds."""
    seeds: dict[str, list] = {}
    for r in runs:
        seeds.setdefault(machine_of(r), []).append(r["seed"])
    if len(seeds) == 1:
        return next(iter(seeds))
    return "; ".join(f"{m}: seed{'s' if len(s) > 1 else ''} {' '.join(map(str, sorted(s)))}"
                     for m, s in sorted(seeds.items()))


def pooled_across_machines(rows: list[Row]) -> list[Row]:
    """A reproduction's accuracy belongs to the method and the seed, not to the machine: the rows
    of one cell (dataset x arch x method x experiment) whose seeds ran on different machines are
    pooled into one, so a paper's figure is compared with all its seeds at once. Where a seed ran
    on two machines, the cell's rows stay apart (pooled, that seed would count twice). Costs are
    never pooled: every cost table and ratio keeps one row per machine."""
    cells: dict[tuple, list[Row]] = {}
    for row in rows:
        cells.setdefault((row.dataset, row.arch, row.method, row.experiment), []).append(row)
    out = []
    for group in cells.values():
        seeds = [s for row in group for s in row.seeds]
        if len(group) > 1 and len(seeds) == len(set(seeds)):
            out += summarise([run for row in group for run in row.runs], pool_machines=True)
        else:
            out += group
    return out


def baseline_for(rows: list[Row], row: Row) -> Row | None:
    """BP on the same dataset, arch and machine (the same experiment's where there is one): a
    ratio between runs on different machines would compare the machines, not the methods."""
    same = [b for b in rows if b.method == BASELINE and b.dataset == row.dataset and b.arch == row.arch
            and b.machine == row.machine]
    return next((b for b in same if b.experiment == row.experiment), same[0] if same else None)


SPEED_METRICS = {"time_train", "energy_train", "emissions"}  # scale with how fast the machine ran
OTHER_SPEED = "‡"  # marks a time, energy or emissions ratio against BP runs made at another machine speed
SPEED_TOLERANCE = 0.25  # probes this far apart mark the ratio (one probe scatters ~10 % on a quiet machine)


def run_days(row: Row) -> set[str]:
    """The UTC dates on which a row's runs started."""
    return {str(run.get("started_at", ""))[:10] for run in row.runs} - {""}


def probed_speed(row: Row) -> float | None:
    """The median of the row's runs' speed probes (GFLOP/s), or None when a run has none (records
    made before the probe, or with measure.speed_probe_s=0)."""
    speeds = [((run.get("environment") or {}).get("speed_probe") or {}).get("value") for run in row.runs]
    if not speeds or any(v is None for v in speeds):
        return None
    return float(np.median(speeds))


def speeds_apart(row: Row, base: Row) -> bool:
    """True when a row's runs and its BP baseline's ran at different machine speeds. One machine
    label (CPU model, threads) can run at very different speeds (README: the same code's BP epoch
    took 25 s on one day and 50 s on the next), so a time, energy or emissions ratio then carries
    that factor, not only the methods'. Memory and FLOPs do not. Where both sides' runs carry the
    speed probe (benchmark/meters.py), their medians more than SPEED_TOLERANCE apart decide; for
    older records, which have none, runs that share no day do."""
    ours, theirs = probed_speed(row), probed_speed(base)
    if ours is not None and theirs is not None:
        return abs(ours / theirs - 1) > SPEED_TOLERANCE
    ours_days, theirs_days = run_days(row), run_days(base)
    return bool(ours_days and theirs_days) and not (ours_days & theirs_days)


def relative(value: float, base: float) -> str:
    if base in (None, 0) or value is None or math.isnan(base):
        return ""
    return f"{(value / base - 1) * 100:+.0f}%"


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (statsmodels' multipletests); nan stays nan."""
    from statsmodels.stats.multitest import multipletests

    finite = [i for i, p in enumerate(p_values) if not math.isnan(p)]
    adjusted = [math.nan] * len(p_values)
    if finite:
        _, corrected, _, _ = multipletests([p_values[i] for i in finite], alpha=0.05, method="holm")
        for i, q in zip(finite, corrected):
            adjusted[i] = float(q)
    return adjusted


SMALL_PP = 1.0  # a significant difference below this many points is called small, in words


def significance_sentences(rows: list[Row]) -> list[dict]:
    """One sentence per method x cell against BP on the same dataset and arch: Welch's t-test on
    the final seeds' test accuracies, Holm-Bonferroni over every comparison the report makes, and
    no claim where either cell was still rising at its budget or trained unstably."""
    pairs = [(row, base) for row in rows if row.method != BASELINE and (base := baseline_for(rows, row)) is not None]
    raw = [welch(row.accs, base.accs) for row, base in pairs]
    limited = [[(name, c) for name, c in ((row.method, row.convergence), ("BP", base.convergence)) if not c.settled]
               for row, base in pairs]
    adjusted = holm([math.nan if lim else p for p, lim in zip(raw, limited)])
    out = []
    for (row, base), p, q, unsettled in zip(pairs, raw, adjusted, limited):
        diff = (row.acc - base.acc) * 100
        head = f"{row.method} vs BP on {row.dataset}/{row.arch}: {diff:+.2f} pp"
        tests = f"p={p:.3g}, Holm-adjusted p={q:.3g} (Welch's t-test, n={row.n} vs {base.n})"
        why = "; ".join(f"{name}: {c.phrase()}" for name, c in unsettled)
        unstable = any(c.unstable for _, c in unsettled)
        if unstable:
            sentence = f"{head}, but training was unstable ({why}); no claim either way."
            verdict = "unstable training: no claim"
        elif unsettled:
            sentence = f"{head}, but the budget was too small to tell ({why}); no claim either way."
            verdict = "budget too small to tell"
        elif math.isnan(p):
            sentence = f"{head}; too few seeds (n={row.n} vs {base.n}) for Welch's t-test."
            verdict = "too few seeds to tell"
        elif q >= 0.05:
            sentence = f"{head}, {tests}: the difference lies inside the seed noise; no claim either way."
            verdict = "matches BP within the seed noise"
        else:
            size = "a small difference, but " if abs(diff) < SMALL_PP else ""
            sentence = (f"{head}, {tests}: {size}{'better' if diff > 0 else 'worse'} than BP beyond the seed noise "
                        f"at the 5% level after the correction.")
            verdict = ("slightly " if abs(diff) < SMALL_PP else "") + ("above BP" if diff > 0 else "below BP")
        out.append({"dataset": row.dataset, "arch": row.arch, "method": row.method, "experiment": row.experiment,
                    "machine": row.machine, "diff_pp": diff, "p_value": p,
                    "p_holm": q, "budget_limited": bool(unsettled) and not unstable,
                    "unstable": unstable, "verdict": verdict,
                    "test": "Welch's t-test (scipy.stats.ttest_ind, equal_var=False), Holm-Bonferroni (statsmodels)",
                    "sentence": sentence})
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


def targets_per_dataset(rows: list[Row], fraction: float, fixed: dict[str, float] | None = None) -> dict[str, float]:
    """Each dataset's target validation accuracy: the fixed one its YAML gives (`target_accuracy`,
    as AlgoPerf fixes targets per workload, so runs and machines compare), else `fraction` x the
    best method's mean final test accuracy of these runs (which moves when a method is added)."""
    fixed = fixed or {}
    best = {}
    for r in rows:
        if not math.isnan(r.acc):
            best[r.dataset] = max(best.get(r.dataset, 0.0), r.acc)
    return {d: fixed.get(d, fraction * acc) for d, acc in best.items()}


def fixed_targets(records: list[dict]) -> dict[str, float]:
    """The `target_accuracy` each dataset's config gave, as recorded with its runs."""
    out = {}
    for r in records:
        d = (r.get("config") or {}).get("dataset") or {}
        if d.get("target_accuracy") is not None:
            out[d["name"]] = float(d["target_accuracy"])
    return out


def cost_to_target(runs: list[dict], targets: dict) -> pd.DataFrame:
    """Per dataset x method x arch x experiment x machine: median over its finals of time and
    energy to the dataset's target (a merged report keeps each experiment's seeds apart, as the
    summary does: FF with AdamW and with SGD are two cells). A workload of the profiles is a
    dataset on one machine."""
    keys = ["dataset", "method", "arch", "experiment", "machine"]
    rows = []
    frame = pd.DataFrame([{"dataset": r["dataset"], "method": r["method"], "arch": r["arch"],
                           "experiment": r.get("experiment", ""), "machine": machine_of(r),
                           "r": r} for r in runs if r["status"] == "completed"])
    if frame.empty:
        return pd.DataFrame(columns=[*keys, "target", "time_s", "energy_j"])
    for cell, group in frame.groupby(keys):
        costs = [to_target(r, targets[cell[0]]) for r in group["r"]]
        rows.append({**dict(zip(keys, cell)), "target": targets[cell[0]],
                     "time_s": float(np.median([c[0] for c in costs])),
                     "energy_j": float(np.median([c[1] for c in costs]))})
    rows.sort(key=lambda c: (c["dataset"], c["arch"], method_rank(c["method"]), c["experiment"], c["machine"]))
    return pd.DataFrame(rows)


def performance_profile(costs: pd.DataFrame, column: str, taus: np.ndarray) -> dict[str, np.ndarray]:
    """rho_m(tau): fraction of workloads (a dataset on one machine, with at least two methods)
    where method m's cost <= tau x the best method's there."""
    if costs.empty:
        return {}
    # A method may appear on several archs of one workload (BP): its best arch counts.
    best_per = costs.groupby(["dataset", "machine", "method"])[column].min().unstack("method")
    # A workload that ran one method only (a merged report: one seed run on another machine) ranks
    # nothing; counted, it would make that method "best" there. A cost never measured (energy
    # without a hardware counter) leaves no workload either.
    best_per = best_per[best_per.notna().sum(axis=1) >= 2]
    if best_per.empty:
        return {}
    best = best_per.min(axis=1)
    profiles = {}
    for method in sorted(best_per.columns, key=method_rank):
        ratio = best_per[method] / best
        ratio = ratio.where(np.isfinite(best_per[method]), np.inf)
        profiles[method] = np.array([(ratio <= tau).mean() for tau in taus])
    return profiles


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated by another (less energy and more accuracy)."""
    front, best_acc = [], -math.inf
    for energy, acc in sorted(points):
        if acc > best_acc:
            front.append((energy, acc))
            best_acc = acc
    return front



# How a paper obtained its figure (published.yaml's `protocol`), and how ours is read the same way
# from the per-epoch test accuracies a reproduction records (train.test_every_epoch).
PROTOCOLS = {
    "best_val": "the epoch with the best validation accuracy, then the test set once (the harness's own)",
    "final_epoch": "the test accuracy after the last epoch, no selection",
    "best_test_epoch": "the best test accuracy over the epochs: selected on the test set",
    "best_val_loss": "the epoch with the lowest validation loss, then the test set once",
}


def protocol_accuracy(runs: list[dict], protocol: str) -> float | None:
    """Mean over `runs` of the test accuracy read the paper's way; None where the runs did not
    record per-epoch test accuracy (then only the harness's own figure exists)."""
    if protocol == "best_val":
        accs = [r["metrics"].get("test_accuracy") for r in runs]
        return float(np.mean(accs)) if accs and None not in accs else None
    values = []
    for r in runs:
        epochs = [h for h in r["metrics"].get("history", []) if h.get("test_accuracy") is not None]
        if not epochs:
            return None
        if protocol == "best_val_loss":  # the first epoch with the lowest validation loss
            values.append(min(epochs, key=lambda h: h.get("val_loss", math.inf))["test_accuracy"])
        else:
            tests = [h["test_accuracy"] for h in epochs]
            values.append(tests[-1] if protocol == "final_epoch" else max(tests))
    return float(np.mean(values)) if values else None


def hp_matches(run: dict, wanted: dict) -> bool:
    """Whether a run's hyperparameters include every key/value of `wanted` (a figure's `hp`)."""
    return all(run.get("hp", {}).get(key) == value for key, value in wanted.items())


def reproduction(rows: list[Row], references: list[dict]) -> list[dict]:
    """Each published figure beside ours. Accuracies are fractions (0..1).

    Ours is the harness's figure (best validation epoch, test once) and, where the runs recorded
    the test accuracy per epoch, also the figure read the paper's way (`protocol`). The verdict
    compares like with like: the paper's protocol where we have it, else the harness's figure.
    "within tolerance" when ours is at most `tolerance` below (and it says so when ours is more than
    `tolerance` above); "below by x pp" otherwise (with the figure's `why_below`, where known), unless
    the runs were still rising at their budget (then the budget was too small to tell).
    Runs capped below the paper's epoch budget (the figure's `epochs`; each run's recorded
    `budget.epochs`) are flagged budget-limited: the epochs column says so, and a shortfall is
    reported at that budget, never as "below" the paper.
    A figure's `stand_in` names a dataset that takes the place of the paper's where that cannot be
    had (offline here: `cifar10_jpeg` for CIFAR-10). Runs on it are shown beside the figure, on a
    row of their own that says so, and get no verdict: their data is not the paper's.
    A figure whose value is not held (`test_accuracy: null`, with `not_held` saying why) still gets
    its row: ours read both ways at the paper's settings, and no verdict.
    One row per experiment: seeds of one experiment run on different machines are pooled
    (`pooled_across_machines`), the machine column naming each machine's seeds."""
    out = []
    for ref in references:
        theirs, tol = ref["test_accuracy"], ref.get("tolerance", 0.01)
        protocol = ref.get("protocol", "best_val")
        datasets = {ref["dataset"], ref.get("stand_in")} - {None}
        matches = [r for r in rows if r.dataset in datasets and (r.arch, r.method) == (ref["arch"], ref["method"])]
        if ref.get("hp"):  # a paper's variant (e.g. its SGD run): only the runs with those settings
            matches = summarise([run for row in matches for run in row.runs if hp_matches(run, ref["hp"])])
            ref = {**ref, "hp": ", ".join(f"{key}={value}" for key, value in ref["hp"].items())}  # as the CSV shows it
        matches = pooled_across_machines(matches)
        if not matches or all(math.isnan(r.acc) for r in matches):
            out.append({**ref, "protocol": protocol, "ours": None, "ours_ci": None, "ours_protocol": None, "n": 0,
                        "epochs": None, "paper_epochs": ref.get("epochs"), "machine": None, "experiment": None,
                        "diff_pp": None, "verdict": "not run"})
            continue
        for ours in matches:
            as_paper = protocol_accuracy(ours.runs, protocol)
            compared = as_paper if as_paper is not None else ours.acc
            diff = None if theirs is None else compared - theirs
            cap = epoch_cap(ours.runs, ref.get("epochs"))
            limited = f"budget-limited: at most {cap} of the paper's {ref['epochs']} epochs" if cap else None
            if diff is None:  # nothing to compare with: ours is shown for a reader who holds the paper
                verdict = f"no verdict: the paper's figure is not held here ({ref.get('not_held', 'not read')})"
            elif ours.dataset != ref["dataset"]:  # a stand-in's data: the difference is shown, never judged
                verdict = f"no verdict: ours on {ours.dataset}, a stand-in for the paper's {ref['dataset']} ({diff * 100:+.2f} pp)"
            elif limited and diff < -tol:  # the paper's budget was not run: a shortfall says nothing yet
                verdict = f"no verdict, {limited} ({diff * 100:+.2f} pp at that budget)"
            elif diff > tol:  # reproduced, but far enough above to say so: the paper's run may have been weaker
                verdict = f"within tolerance ({diff * 100:+.2f} pp; tolerance {tol * 100:.2f} pp; above the paper by more than that)"
            elif diff >= -tol:
                verdict = f"within tolerance ({diff * 100:+.2f} pp; tolerance {tol * 100:.2f} pp)"
            elif ours.convergence.rising:
                verdict = "budget too small to tell: " + ours.convergence.curve_phrase()
            else:
                verdict = f"below by {-diff * 100:.2f} pp" + (f": {ref['why_below']}" if ref.get("why_below") else "")
            if limited and limited not in verdict:  # every row run short of the paper's epochs says so
                verdict += f"; {limited}"
            if ours.convergence.unstable:  # whatever the figure, the reader is told the training was not sound
                verdict += "; " + ours.convergence.phrase()
            epochs = "/".join(map(str, sorted({r["metrics"].get("epochs_run") for r in ours.runs} - {None})))
            out.append({**ref, "ran_on": ours.dataset, "protocol": protocol, "ours": ours.acc, "ours_ci": ours.ci,
                        "ours_protocol": as_paper, "budget_limited": bool(cap), "paper_epochs": ref.get("epochs"),
                        "n": ours.n, "seeds": " ".join(map(str, sorted(ours.seeds))),
                        "epochs": f"{epochs} (cap {cap} of {ref['epochs']})" if cap else epochs, "machine": ours.machine,
                        "experiment": ours.experiment, "diff_pp": None if diff is None else diff * 100, "verdict": verdict})
    return out


def epoch_cap(runs: list[dict], paper_epochs: int | None) -> int | None:
    """The largest epoch budget the runs were given (`budget.epochs`), where it is below the
    paper's (`paper_epochs`): the runs were cut short of the paper's schedule. None otherwise."""
    budgets = [(run.get("budget") or {}).get("epochs") for run in runs]
    if paper_epochs is None or not budgets or None in budgets:
        return None
    return max(budgets) if max(budgets) < paper_epochs else None


def budget_summary(records: list[dict]) -> str:
    """One sentence: the budget every cell had (trials, epochs, seeds, early stopping) and the
    compute all runs used, so that no comparison is read without it."""
    budgets = {tuple(sorted((k, v) for k, v in (r.get("budget") or {}).items() if k in ("n_trials", "max_epochs", "n_seeds", "epochs")))
               for r in records}
    patience = sorted({((r.get("config") or {}).get("train") or {}).get("patience") for r in records} - {None})
    parts = []
    for b in sorted(budgets):
        d = dict(b)
        if "n_trials" in d:
            parts.append(f"{d['n_trials']} tuning trials x at most {d['max_epochs']} epochs per cell, then {d['n_seeds']} final seeds")
        elif "epochs" in d:
            parts.append(f"single runs of at most {d['epochs']} epochs")
    stopping = ("early stopping after " + "/".join(map(str, patience)) + " epochs without improvement") if any(patience) else "no early stopping"
    seconds = sum(measurement(r, "time_total")[0] or 0 for r in records)
    joules = [measurement(r, "energy_train")[0] for r in records]
    energy = sum(j for j in joules if j is not None)
    estimated = any(measurement(r, "energy_train")[1] for r in records)
    compute = f"{len(records)} runs, {seconds / 60:.3g} min in all" + (
        f", {energy / 1000:.3g} kJ of training energy{' (estimated)' if estimated else ''}" if any(j is not None for j in joules) else "")
    return f"Budget: {'; '.join(parts) or 'unknown'}; {stopping}. Compute: {compute}."


def hardware_of(env: dict) -> str:
    return f"{env.get('cpu_model')} / {env.get('device')} / {env.get('gpu_model') or 'no GPU'}"


def machine_speeds(envs: list[dict]) -> str:
    """Per hardware, the range of the runs' speed probes with its unit and source (the figure the ‡
    mark compares; benchmark/meters.py: speed_probe)."""
    probes = {}
    for env in envs:
        if (env.get("speed_probe") or {}).get("value") is not None:
            probes.setdefault(hardware_of(env), []).append(env["speed_probe"])
    if not probes:
        return "no speed probe in these records (made before 2026-12-07, or with measure.speed_probe_s=0)"
    return "; ".join(f"{hw}: {min(p['value'] for p in figs):.0f}-{max(p['value'] for p in figs):.0f} "
                     f"{figs[0]['unit']} over {len(figs)} runs ({figs[0]['source']})" for hw, figs in sorted(probes.items()))


def provenance(records: list[dict], storage: str | None) -> dict:
    envs = [r.get("environment", {}) for r in records]
    first = envs[0] if envs else {}
    fingerprints = {}
    for r in records:
        d = r.get("data") or {}
        if d.get("name"):
            entry = fingerprints.setdefault(d["name"], {"splits": set()})
            entry.update(sha256=d.get("sha256"), canonical=d.get("canonical"), basis=d.get("canonical_basis"))
            # Images: a seeded validation hold-out; graphs: which node split (a graph's runs may use several).
            entry["splits"].add(f"node split {d['split']}" if d.get("kind") == "graph" else f"split seed {d.get('split_seed')}")
    for entry in fingerprints.values():
        entry["splits"] = ", ".join(sorted(entry["splits"]))
    budgets = {repr(r.get("budget")) for r in records if r.get("budget")}
    return {
        "hardware": sorted({hardware_of(e) for e in envs}),
        "machine speed": machine_speeds(envs),
        "packages": first.get("packages", {}),
        "python": first.get("python"),
        "git_sha": sorted({e.get("git_sha") or "unknown" for e in envs}),
        "fingerprints": fingerprints,
        "budget": sorted(budgets),
        "seeds": sorted({r["seed"] for r in records if r.get("kind") == "final"}),
        "dates": (min((r["started_at"] for r in records if r.get("started_at")), default=None),
                  max((r["finished_at"] for r in records if r.get("finished_at")), default=None)),
        "storage": storage,
        "dashboard": f"optuna-dashboard --host 127.0.0.1 {storage}" if storage else None,
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "n_records": len(records),
    }


def fmt(value, digits=2) -> str:
    """An accuracy-like figure to `digits` decimals (0.01 pp for percentages); "–" when absent."""
    if value is None or (isinstance(value, float) and (math.isnan(value) or math.isinf(value))):
        return "–"
    if abs(value) >= 1e4 or (0 < abs(value) < 1e-2):
        return f"{value:.3g}"
    return f"{value:.{digits}f}"


def fmt_cost(value, inf: str = "not reached") -> str:
    """A cost (time, energy, memory, FLOPs) to 3 significant figures, without exponent notation
    below a million; `inf` for an infinite cost, "–" when absent."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if math.isinf(value):
        return inf
    if value == 0:
        return "0"
    rounded = float(f"{value:.3g}")
    if abs(rounded) >= 1e6:
        return f"{rounded:.3g}"
    if abs(rounded) >= 100:
        return f"{rounded:,.0f}"
    return f"{rounded:.3g}"


def costs_display(costs: pd.DataFrame) -> pd.DataFrame:
    """Time/energy to target as printed: units in headers, 3 significant figures, "not reached"."""
    if costs.empty:
        return costs
    cells = {"dataset": costs["dataset"], "method": costs["method"], "arch": costs["arch"]}
    if len(costs[["experiment", "machine"]].drop_duplicates()) > 1:  # as the summary table shows them
        cells.update({"experiment": costs["experiment"], "machine": costs["machine"]})
    return pd.DataFrame({
        **cells,
        "target (val acc, %)": [fmt(t * 100) for t in costs["target"]],
        "time to target (s)": [fmt_cost(v) for v in costs["time_s"]],
        "energy to target (J)": [fmt_cost(v, inf="not reached") if not math.isnan(v)
                                 else "one estimate per run: no per-epoch energy" for v in costs["energy_j"]],
    })


def dataset_shown(verdict: dict) -> str:
    """The paper's dataset, or the stand-in ours ran on, named as one (`reproduction`)."""
    ran_on = verdict.get("ran_on")
    return verdict["dataset"] if ran_on in (None, verdict["dataset"]) else f"{ran_on} (stand-in for {verdict['dataset']})"


def reproduction_display(verdicts: list[dict]) -> pd.DataFrame:
    """The reproduction table as printed: accuracies in percent to 0.01 pp, each with how it was read."""
    def pct(value, ci=None):
        if value is None:
            return "–"
        return fmt(value * 100) + (f" ± {fmt(ci * 100)}" if ci is not None and not math.isnan(ci) else "")

    return pd.DataFrame([{
        "dataset": dataset_shown(v), "arch": v["arch"], "method": v["method"],
        "published (%)": "not held" if v["test_accuracy"] is None else fmt(v["test_accuracy"] * 100),
        "source": v.get("source", ""),
        "how the paper read it": v["protocol"].replace("_", " "),
        "ours, harness (%, best val epoch, mean ± 95% CI)": pct(v["ours"], v.get("ours_ci")),
        "ours, read the paper's way (%)": "(same)" if v["protocol"] == "best_val" and v["ours"] is not None else pct(v.get("ours_protocol")),
        "seeds": v.get("n", 0), "epochs": v.get("epochs") or "–", "machine": v.get("machine") or "–",
        "verdict": v["verdict"],
    } for v in verdicts])


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A table as Markdown, the form the README quotes the report's tables in (verbatim, so that a
    test can check the README against the records)."""
    line = lambda cells: "| " + " | ".join(str(c) for c in cells) + " |"
    return "\n".join([line(header), "|" + "---|" * len(header), *map(line, rows)]) + "\n"


def reproduction_markdown(verdicts: list[dict]) -> str:
    """The reproduction table as Markdown, the README's table verbatim (one row per figure and
    machine run): paper's figure with its source and how it was read, ours both ways, the
    seeds, epochs and machine, the verdict. A figure with no runs behind it keeps its row, "not
    run", so the table also says what is still to reproduce."""
    def pct(value, ci=None):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "–"
        return f"{value * 100:.2f}" + (f" ± {ci * 100:.2f}" if ci is not None and not math.isnan(ci) else "") + " %"

    def published(value):
        return "not held" if value is None else pct(value)

    header = ["method", "dataset", "arch", "paper (source; how read)", "ours: harness (best-val epoch), mean ± 95 % CI",
              "ours read the paper's way", "seeds; epochs; machine", "verdict"]
    rows = []
    for v in verdicts:
        how = v["protocol"].replace("_", " ")
        if v.get("ours") is None:  # not run: nothing of ours to show
            ours = paper_way = runs = "–"
        else:
            ours = pct(v["ours"], v.get("ours_ci"))
            paper_way = "(same)" if v["protocol"] == "best_val" else f"{pct(v.get('ours_protocol'))} ({how})"
            runs = f"{v.get('seeds', '')}; {v.get('epochs') or '–'}; {v.get('machine') or '–'}"
        rows.append([v["method"], dataset_shown(v), v["arch"], f"{published(v['test_accuracy'])} ({v.get('source', '')}; {how})",
                     ours, paper_way, runs, v["verdict"]])
    return markdown_table(header, rows)


def summary_table(rows: list[Row]) -> pd.DataFrame:
    several = len({(r.experiment, r.machine) for r in rows}) > 1
    table = []
    for r in rows:
        base = baseline_for(rows, r)
        entry = {"dataset": r.dataset, "arch": r.arch, "method": r.method}
        if several:
            entry.update({"experiment": r.experiment, "machine": r.machine})
        entry.update({"n": r.n,
                 "test acc (%)": fmt(r.acc * 100), "95% CI (± pp)": fmt(r.ci * 100),
                 "converged": "yes" if r.convergence.settled else "no: " + r.convergence.phrase().replace("not converged at this budget: ", "")})
        for key, label, unit, _ in METRICS:
            if key in r.values:
                value, est, _src = r.values[key]
                rel = relative(value, base.values.get(key, (None,))[0]) if base and r.method != BASELINE else ""
                if rel and key in SPEED_METRICS and speeds_apart(r, base):
                    rel += OTHER_SPEED
                entry[f"{label} ({unit})"] = fmt_cost(value) + ("†" if est else "") + (f" ({rel} vs BP)" if rel else "")
            else:
                entry[f"{label} ({unit})"] = "–"
        table.append(entry)
    return pd.DataFrame(table)


def depth_of(row: Row) -> int | None:
    """The hidden-layer count of a row's MLP when its arch was built from a depth (mlp_depth.yaml)."""
    arch = ((row.runs[0].get("config") or {}).get("arch") or {}) if row.runs else {}
    return arch.get("depth")


DEPTH_COLUMNS = [  # key in the scaling table, label with unit, where the figure comes from
    ("activation_mib", "activation memory (MiB)", "bytes autograd saved for backward in one training step (saved-tensor hooks)"),
    ("peak_mib", "peak memory (MiB)", "the run's peak: torch allocator peak on a GPU, process RSS growth on a CPU"),
    ("epoch_s", "time per epoch (s)", "training time (meters' train window) / epochs run"),
    ("acc_pct", "test accuracy (%)", "best-validation epoch, test set once"),
]


def depth_table(rows: list[Row]) -> pd.DataFrame:
    """One line per method x depth for the rows built from a depth: the figures the scaling section
    plots. Empty when fewer than two depths were run."""
    table = []
    for r in rows:
        depth = depth_of(r)
        if depth is None:
            continue
        epochs = [run["metrics"].get("epochs_run") or 0 for run in r.runs]
        time = r.values.get("time_train", (math.nan,))[0]
        table.append({
            "method": r.method, "dataset": r.dataset, "machine": r.machine, "depth": int(depth),
            "activation_mib": r.values.get("activation_memory", (math.nan,))[0],
            "peak_mib": r.values.get("peak_memory", (math.nan,))[0],
            "epoch_s": time / np.mean(epochs) if epochs and np.mean(epochs) else math.nan,
            "acc_pct": r.acc * 100,
        })
    frame = pd.DataFrame(table)
    if frame.empty or frame["depth"].nunique() < 2:
        return pd.DataFrame()
    frame["rank"] = [method_rank(m) for m in frame["method"]]
    return frame.sort_values(["dataset", "rank", "depth"]).drop(columns="rank").reset_index(drop=True)


def depth_display(frame: pd.DataFrame) -> pd.DataFrame:
    if frame.empty:
        return frame
    shown = frame[["method", "dataset", "depth"]].copy()
    for key, label, _ in DEPTH_COLUMNS:
        shown[label] = [fmt(v) if key == "acc_pct" else fmt_cost(v) for v in frame[key]]
    return shown


def ratio(value, base) -> str:
    """value / base as "1.23x", or "–" where either is missing."""
    if value is None or base in (None, 0) or any(isinstance(v, float) and math.isnan(v) for v in (value, base)):
        return "–"
    return f"{fmt_cost(value / base)}x"


def marked(text: str, mark: str) -> str:
    """A ratio with its mark, none on a missing one ("–")."""
    return text if text == "–" else text + mark


def glance_table(rows: list[Row], significance: list[dict]) -> pd.DataFrame:
    """The first screen: for every method that shares a cell with BP, whether it matches BP within
    the seed noise, at what cost ratio (same machine), and how sure the comparison is."""
    by_key = {(s["dataset"], s["arch"], s["method"], s["experiment"], s["machine"]): s for s in significance}
    several = len({(r.experiment, r.machine) for r in rows}) > 1
    table = []
    for row in rows:
        sig = by_key.get((row.dataset, row.arch, row.method, row.experiment, row.machine))
        base = baseline_for(rows, row)
        if sig is None or base is None:
            continue
        entry = {"method": row.method, "cell": f"{row.dataset}/{row.arch}"}
        other_speed = OTHER_SPEED if speeds_apart(row, base) else ""
        if several:
            entry["experiment @ machine"] = f"{row.experiment} @ {row.machine}"
        if sig["unstable"]:
            sure = "no test: training was unstable"
        elif sig["budget_limited"]:
            sure = "no test: a curve was still rising"
        elif math.isnan(sig["p_value"]):
            sure = f"no test: {row.n} vs {base.n} seeds"
        else:
            sure = f"Holm p = {sig['p_holm']:.2g} ({row.n} vs {base.n} seeds)"
        entry.update({
            "test acc vs BP (pp)": f"{sig['diff_pp']:+.2f}",
            "verdict": sig["verdict"],
            "how sure": sure,
            "time / BP": marked(ratio(row.values.get("time_train", (None,))[0], base.values.get("time_train", (None,))[0]), other_speed),
            "energy / BP": marked(ratio(row.values.get("energy_train", (None,))[0], base.values.get("energy_train", (None,))[0]), other_speed),
            "peak memory / BP": ratio(row.values.get("peak_memory", (None,))[0], base.values.get("peak_memory", (None,))[0]),
        })
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


# ------------------------------------------------------------------------------------------------
# How each method learns (runs recorded with diagnostics on; benchmark/diagnostics.py)


def diagnosed_runs(runs: list[dict]) -> list[dict]:
    """The runs that carry diagnostics, BP first."""
    found = [r for r in runs if r.get("diagnostics")]
    return sorted(found, key=lambda r: (method_rank(r["method"]), r["dataset"], natural(r["arch"]), r["seed"]))


def _final_epoch_mean(series: dict) -> float | None:
    """Mean of a layer's alignment cosines at the points measured in the run's last epoch."""
    last = max(series["epoch"])
    values = [c for c, e in zip(series["cosine"], series["epoch"]) if e == last and c is not None]
    return sum(values) / len(values) if values else None


def alignment_table(runs: list[dict]) -> pd.DataFrame:
    """Per run: the mean final-epoch cosine with BP of its first and last layers that have one,
    the final weight-alignment angle where there is one, and why layers were left empty."""
    rows = []
    for r in diagnosed_runs(runs):
        al = r["diagnostics"]["alignment"]
        layers = al.get("order") or list(al["layers"])  # network order where recorded
        first = _final_epoch_mean(al["layers"][layers[0]]) if layers else None
        last = _final_epoch_mean(al["layers"][layers[-1]]) if layers else None
        angles = (al.get("weight_alignment") or {}).get("layers", {})
        rows.append({
            "method": r["method"], "dataset": r["dataset"], "arch": r["arch"], "seed": r["seed"],
            "first layer": layers[0] if layers else "",
            "cos first (final epoch)": first,
            "last layer": layers[-1] if len(layers) > 1 else "",
            "cos last (final epoch)": last if len(layers) > 1 else None,
            "weight angle, final (deg)": ", ".join(f"{k}: {v['angle'][-1]:.1f}" for k, v in angles.items()) or "",
            "empty (why)": "; ".join(sorted({why for why in al["empty"].values()})),
        })
    return pd.DataFrame(rows)


def probes_table(runs: list[dict]) -> pd.DataFrame:
    """Per run and layer: the linear probe's test accuracy (%), in the layers' order."""
    rows = []
    for r in diagnosed_runs(runs):
        for depth, (layer, fig) in enumerate((k, v) for k, v in r["diagnostics"]["probes"].items() if isinstance(v, dict)):
            rows.append({"method": r["method"], "dataset": r["dataset"], "arch": r["arch"], "seed": r["seed"],
                         "depth": depth + 1, "layer": layer, "probe accuracy (%)": fig["value"] * 100})
    return pd.DataFrame(rows)


def robustness_table(runs: list[dict]) -> pd.DataFrame:
    """Per run: clean accuracy and accuracy under each noise sigma and FGSM eps (%, pixel units)."""
    rows = []
    for r in diagnosed_runs(runs):
        rb = r["diagnostics"]["robustness"]
        row = {"method": r["method"], "dataset": r["dataset"], "arch": r["arch"], "seed": r["seed"],
               "clean (%)": rb["clean"]["value"] * 100}
        for sigma, fig in rb["noise"].items():
            row[f"noise σ={sigma} (%)"] = None if fig["value"] is None else fig["value"] * 100
        for eps, fig in rb["fgsm"].items():
            row[f"FGSM ε={eps} (%)"] = None if fig["value"] is None else fig["value"] * 100
        rows.append(row)
    return pd.DataFrame(rows)
