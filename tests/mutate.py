"""`make mutate`: put one-line defects into a copy of the project, one at a time, and run the test
suite against each (stopping at its first failure). A defect no test catches is a hole in the suite.

    python -m tests.mutate                 every defect (tens of minutes on 2 cores)
    python -m tests.mutate --only fa_transport split_test_on_val
    python -m tests.mutate --list

The working tree is never touched: the tracked files are copied to a temporary folder and each
defect is applied there and undone after its run. The suite runs in `ORDER` (the fast unit tier
first), so most defects are caught in seconds. Prints a table (defect, area, caught by, seconds)
and writes it to results/mutate.md. Not part of CI's time budget.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# The fast unit tier first: most defects are caught there in seconds. Test files not named here
# run after these (`suite`), so a new test file is never left out.
ORDER = [
    "tests/test_claims.py", "tests/test_faithfulness.py", "tests/test_meters.py", "tests/test_tuning_rules.py",
    "tests/test_report_budget.py", "tests/test_report_compare.py", "tests/test_cafo_cache.py", "tests/test_core.py", "tests/test_audit.py", "tests/test_imports.py",
    "tests/test_bad_input.py", "tests/test_reproduction.py",
    "tests/test_configs.py", "tests/test_report.py", "tests/test_speed_options.py", "tests/test_tuning.py",
    "tests/reliability", "tests/test_methods.py", "tests/test_registry.py", "tests/test_postgres.py",
]


@dataclass(frozen=True)
class Defect:
    name: str
    area: str
    path: str
    old: str  # must occur exactly once in `path`
    new: str
    what: str


DEFECTS = [
    # -- methods: locality, feedback, losses, prediction
    Defect("mf_no_detach", "methods/locality", "methods/mf.py",
           'self.modules["layers"][i](h.detach()))', 'self.modules["layers"][i](h))',
           "Mono-Forward's layer input not detached: gradients cross layers"),
    Defect("local_no_detach", "methods/locality", "methods/local.py",
           "h = stage(h.detach())  # the boundary", "h = stage(h)  # the boundary",
           "local learning's module input not detached"),
    Defect("sff_no_detach", "methods/locality", "methods/sff.py",
           "out = block(h.detach())  # the boundary", "out = block(h)  # the boundary",
           "SFF's block input not detached"),
    Defect("fa_transport", "methods/feedback", "methods/feedback_alignment.py",
           "signal = self.send_down(delta, self.feedback[i], outs[i].shape, self.layers[i + 1])",
           "signal = self.send_down(delta, self.layers[i + 1].weight.detach(), outs[i].shape, self.layers[i + 1])",
           "FA sends the error down through W^T (weight transport: FA becomes BP)"),
    Defect("dfa_transport", "methods/feedback", "methods/feedback_alignment.py",
           "b, after = self.feedback[i], self.layers[i + 1]",
           "b, after = (self.layers[i + 1].weight.detach() if i == len(self.feedback) - 1 else self.feedback[i]), self.layers[i + 1]",
           "DFA's last block gets the error through the head's W^T"),
    Defect("pepita_uses_wt", "methods/feedback", "methods/pepita.py",
           "deltas.append(out_mod - target)",
           "deltas.append(out_mod - target); deltas[-2] = (out - target) @ self.modules['layers'][-1].weight",
           "PEPITA's last hidden layer updated with W^T e (backprop's signal)"),
    Defect("ccl_preactivation", "methods/faithfulness", "methods/ccl.py",
           "            if l > 0:  # every level but the input's is activated, and the activated value goes down\n                c = self.act(c)\n            levels.append(c)",
           "            levels.append(self.act(c) if l > 0 else c)",
           "CCL hands the pre-activation down the feedback chain (the old bug)"),
    Defect("ff_all_negative", "methods/losses", "methods/ff.py",
           "is_positive[:n_pos] = 1.0", "is_positive[:n_pos] = 0.0",
           "FF trains every sample as a negative"),
    Defect("ff_wrong_label_can_be_true", "methods/losses", "methods/ff.py",
           "offset = torch.randint(1, self.num_classes, y.shape, device=y.device)",
           "offset = torch.zeros_like(y)",
           "FF's negatives carry the true label"),
    Defect("ff_readout_always", "methods/costs", "methods/ff.py",
           'if self.hp.predict == "linear":\n            # Only', 'if True:\n            # Only',
           "FF's read-out trained (and charged) even when it predicts by goodness"),
    Defect("lcff_votes_like_ff", "methods/prediction", "methods/lcff.py",
           "        return list(range(n_layers))", "        return list(range(1, n_layers))",
           "LCFF votes with FF's layers (the first skipped), not with the sum its loss trains"),
    Defect("noprop_ct_schedule_not_monotone", "methods/faithfulness", "methods/noprop.py",
           "rates, heights = F.softplus(self.raw_rates), F.softplus(self.raw_heights)",
           "rates, heights = F.softplus(self.raw_rates), self.raw_heights",
           "NoProp-CT's learned schedule free to fall: signal no longer rising with t, SNR' a negative weight"),
    Defect("bp_predict_argmin", "methods/prediction", "methods/bp.py",
           'def predict(self, x):\n        return self.modules["net"](x)', 'def predict(self, x):\n        return -self.modules["net"](x)',
           "BP predicts the least likely class"),
    Defect("sff_no_layernorm", "methods/faithfulness", "methods/sff.py",
           "return normalise(h) if self.hp.layer_norm else h", "return h",
           "SFF blocks fed un-normalised outputs"),
    # -- data: splits, normalisation, labels
    Defect("split_test_on_val", "data/splits", "benchmark/loop.py",
           'metrics["test_accuracy"], metrics["test_loss"] = evaluate(\n                    method, data.test_x, data.test_y',
           'metrics["test_accuracy"], metrics["test_loss"] = evaluate(\n                    method, data.val_x, data.val_y',
           "the figure called test accuracy computed on the validation images"),
    Defect("split_val_overlaps_train", "data/splits", "benchmark/data.py",
           "return order[val_size:], order[:val_size]", "return order, order[:val_size]",
           "validation images also in the training set"),
    Defect("normalise_with_test_stats", "data/normalisation", "benchmark/data.py",
           "        test_x=prepare(raw.test_images),", "        test_x=(torch.from_numpy(raw.test_images).float() / 255.0),",
           "test images not normalised like the training images"),
    Defect("labels_shifted", "data/labels", "benchmark/data.py",
           "        train_y=labels(raw.train_labels[train_idx]),",
           "        train_y=labels((raw.train_labels[train_idx] + 1) % raw.num_classes),",
           "training labels off by one"),
    Defect("augment_test_images", "data/augmentation", "benchmark/loop.py",
           'if data.augment != "none":', 'if True:',
           "MNIST-like data augmented although its config says none"),
    Defect("crop_reflect_ignored", "data/augmentation", "benchmark/data.py",
           "    if reflect:", "    if False:",
           "the comparison's reflection-padded crop pads with black"),
    Defect("resume_ignores_data", "runs/resume", "benchmark/runner.py",
           "*(dataset.get(k, default) for k, default in SAME_RUN_DATASET_KEYS.items()), batch_size)",
           "dataset.get(\"val_size\"), batch_size)",
           "a run on other data (augmentation, split, resize) is kept as if finished"),
    # -- meters: energy, time, memory, FLOPs
    Defect("energy_doubled", "meters/energy", "benchmark/meters.py",
           "self.joules[name] += spent[1] - (self._excluded[1] - excluded_j)",
           "self.joules[name] += 2 * (spent[1] - (self._excluded[1] - excluded_j))",
           "every energy window counted twice"),
    Defect("time_not_accumulated", "meters/time", "benchmark/meters.py",
           "self.seconds[name] += spent[0] - (self._excluded[0] - excluded_s)",
           "self.seconds[name] = spent[0] - (self._excluded[0] - excluded_s)",
           "training time is the last window's, not the sum"),
    Defect("activation_memory_zero", "meters/memory", "benchmark/meters.py",
           "self.activation_bytes = max(self.activation_bytes or 0, peak.peak)", "self.activation_bytes = 0",
           "activation memory always recorded as 0"),
    Defect("flops_not_scaled", "meters/flops", "benchmark/meters.py",
           'self.flops["train"] += self._step_flops_per_sample * n', 'self.flops["train"] += self._step_flops_per_sample',
           "training FLOPs of one sample per step, not of the batch"),
    Defect("cpu_time_says_gpu", "meters/labels", "benchmark/meters.py",
           '    return "time.perf_counter"\n', '    return "time.perf_counter, GPU synchronised"\n',
           "CPU timings labelled as GPU-synchronised"),
    Defect("nvml_silent_fallback", "meters/energy", "benchmark/energy.py",
           '    if wanted == "nvml":\n        if device.type != "cuda":', '    if wanted == "nvml":\n        if False:',
           "measure.energy=nvml on a CPU run silently falls back"),
    # -- tuning: seeds, budgets, pruning
    Defect("finals_same_seed", "tuning/seeds", "benchmark/tuning.py",
           "return [int(job.cfg.seed) + 1 + i for i in range(job.tuning.n_seeds)]",
           "return [int(job.cfg.seed) + 1 for i in range(job.tuning.n_seeds)]",
           "every final re-run on the same seed"),
    Defect("budget_plus_one", "tuning/budgets", "benchmark/tuning.py",
           "if sum(counts_against_budget(t) for t in trials) >= n_trials:",
           "if sum(counts_against_budget(t) for t in trials) > n_trials:",
           "one more trial than the budget"),
    Defect("pruning_ignored", "tuning/pruning", "benchmark/tuning.py",
           "        if trial.should_prune():", "        if False:",
           "the pruner's decision ignored"),
    Defect("unstable_trial_selected", "tuning/selection", "benchmark/tuning.py",
           "key=lambda t: (stable(t), t.value, -t.number)", "key=lambda t: (t.value, -t.number)",
           "the finals inherit a trial whose training loss was exploding, for its validation accuracy"),
    Defect("early_stopping_off", "loop/budget", "benchmark/loop.py",
           "stopping = bool(cfg.patience and p.bad_epochs >= cfg.patience and not phase.fixed)",
           "stopping = False",
           "early stopping never stops"),
    # -- records and statistics
    Defect("record_drops_seed", "records", "benchmark/runner.py",
           '        "seed": seed,', '        "seed": cfg.seed,',
           "records the config seed instead of the run's"),
    Defect("ci_normal_quantile", "statistics", "benchmark/report/numbers.py",
           "half = stats.t.ppf(0.975, n - 1) * v.std(ddof=1) / math.sqrt(n)",
           "half = 1.96 * v.std(ddof=1) / math.sqrt(n)",
           "95 % CI with the normal quantile instead of Student's t"),
    Defect("welch_as_student", "statistics", "benchmark/report/numbers.py",
           "stats.ttest_ind(a, b, equal_var=False)", "stats.ttest_ind(a, b, equal_var=True)",
           "Student's pooled t-test in place of Welch's"),
    Defect("holm_ignored", "statistics", "benchmark/report/numbers.py",
           "        elif q >= 0.05:", "        elif p >= 0.05:",
           "significance decided on the raw p, the Holm-Bonferroni correction ignored"),
    Defect("budget_limited_claims", "statistics", "benchmark/report/numbers.py",
           "if not c.settled]", "if False]",
           "a cell still rising when its budget ran out gets a better/worse claim"),
    Defect("unstable_loss_ignored", "statistics", "benchmark/results.py",
           "    return rise is not None and rise > UNSTABLE_RISE\n", "    return False\n",
           "a run whose training loss climbed 23-fold is reported as converged, with a claim"),
    Defect("superseded_finals_pooled", "statistics", "benchmark/report/numbers.py",
           "    return [r for r in finals if id(r) not in left_out]\n", "    return finals\n",
           "a study's earlier best setting's finals pooled with its current ones, each seed counted twice"),
    Defect("ratio_across_machines", "statistics", "benchmark/report/numbers.py",
           "            and b.machine == row.machine]", "]",
           "a merged report divides a method's cost by BP's from another machine"),
    Defect("paper_protocol_ignored", "statistics", "benchmark/report/numbers.py",
           "compared = as_paper if as_paper is not None else ours.acc", "compared = ours.acc",
           "a reproduction verdict compares our best-validation figure with a paper's best-test-epoch figure"),
    Defect("splits_to_leaves_graph", "data/device", "benchmark/data.py",
           "graph = self.graph.to(device) if self.graph is not None else None", "graph = self.graph",
           "moving splits to a device leaves the graph behind (crashed every graph method on CUDA)"),
    Defect("capped_runs_judged_below", "report/statistics", "benchmark/report/numbers.py",
           "elif limited and diff < -tol:", "elif False:",
           "runs cut to a fraction of a paper's epochs are judged 'below' the paper's figure"),
    Defect("epoch_cap_ignored", "config", "benchmark/config.py",
           "        cfg.train.epochs = cap", "        pass",
           "train.epoch_cap does not cut the paper's epochs: a budget-limited experiment runs the full schedule"),
    Defect("cafo_cache_budget_ignored", "resources", "methods/cafo.py",
           "            if row_items[i] * itemsize * len(x) <= budget_bytes:", "            if True:",
           "CaFo's feature cache grows past its memory budget"),
    Defect("fgnn_layer_input_with_grad", "methods/locality", "methods/forward_gnn.py",
           "with torch.no_grad():\n            self.layer_input = self.input_of_layer(self.current)",
           "if True:\n            self.layer_input = self.input_of_layer(self.current)",
           "a ForwardGNN layer's input computed with gradients: its loss reaches the frozen layers below"),
    Defect("bp_graph_head_ignored", "archs/graph", "benchmark/archs.py",
           'graph_conv=kind, graph_head=head == "graph")', 'graph_conv=kind, graph_head=False)',
           "BP on a graph arch ends in a linear head whatever arch.head says (not the reference's GCN)"),
    Defect("pooled_seed_counted_twice", "report/statistics", "benchmark/report/numbers.py",
           "if len(group) > 1 and len(seeds) == len(set(seeds)):", "if len(group) > 1:",
           "a seed run on two machines counts twice in a pooled reproduction row"),
]


def tracked_copy(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for rel in files:
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


# Not run against a defect: it checks that each defect's line is still there, so it would "catch"
# every defect that reached it and hide whether a real test does.
META = ["tests/test_mutate_list.py"]


def suite(copy: Path) -> list[str]:
    rest = sorted(str(p.relative_to(copy)) for p in (copy / "tests").glob("test_*.py"))
    return ORDER + [f for f in rest if f not in ORDER and f not in META]


def first_failure(output: str) -> str:
    match = re.search(r"^(?:FAILED|ERROR) (\S+)", output, re.M)
    return match.group(1) if match else "(suite failed: see log)"


def run_one(defect: Defect, copy: Path, timeout: int) -> tuple[str, float]:
    target = copy / defect.path
    original = target.read_text()
    if original.count(defect.old) != 1:
        return f"STALE: the defect's line occurs {original.count(defect.old)} times in {defect.path}", 0.0
    target.write_text(original.replace(defect.old, defect.new))
    start = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *suite(copy)],
                             cwd=copy, capture_output=True, text=True, timeout=timeout,
                             env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        verdict = "MISSED" if out.returncode == 0 else first_failure(out.stdout + out.stderr)
    except subprocess.TimeoutExpired:
        verdict = f"MISSED (suite still running after {timeout} s)"
    finally:
        target.write_text(original)
    return verdict, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="defect names to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the defects and exit")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per defect")
    parser.add_argument("--out", default=str(REPO / "results" / "mutate.md"))
    args = parser.parse_args(argv)
    chosen = [d for d in DEFECTS if not args.only or d.name in args.only]
    if args.list:
        for d in chosen:
            print(f"{d.name:28} {d.area:22} {d.what}")
        return 0
    rows, started = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bpfree-mutate-") as tmp:
        copy = Path(tmp)
        tracked_copy(copy)
        for d in chosen:
            verdict, seconds = run_one(d, copy, args.timeout)
            rows.append((d, verdict, seconds))
            print(f"{d.name:28} {verdict} ({seconds:.0f} s)", flush=True)
    caught = sum(not v.startswith(("MISSED", "STALE")) for _, v, _ in rows)
    table = ["| defect | area | what it breaks | caught by | s |", "|---|---|---|---|---|"]
    table += [f"| `{d.name}` | {d.area} | {d.what} | {v} | {s:.0f} |" for d, v, s in rows]
    summary = (f"{caught} of {len(rows)} defects caught; {time.perf_counter() - started:.0f} s in all; "
               f"{date.today().isoformat()}")
    text = "\n".join(table) + f"\n\n{summary}\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print("\n" + text)
    return 0 if caught == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
