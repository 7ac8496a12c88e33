"""Report rendering: the self-contained HTML page (figures embedded) and its PDF (WeasyPrint).

Owns the page's layout and style, the tables' HTML, and each method's notes (its module docstring:
the algorithm and its differences from the paper).
"""
from __future__ import annotations

import html
import sys
from pathlib import Path

import pandas as pd

from benchmark.report.numbers import SPEED_TOLERANCE, reproduction_display
from benchmark.results import UNSTABLE_RISE

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
body { font-family: 'DejaVu Sans', Arial, sans-serif; font-size: 10pt; margin: 1.5em auto; max-width: 1150px;
       padding: 0 1em; color: #222; line-height: 1.35; }
h1 { font-size: 17pt; margin-bottom: 0.2em; } h2 { font-size: 13pt; border-bottom: 1px solid #ccc; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 8pt; }
th, td { border: 1px solid #bbb; padding: 2px 5px; text-align: left; vertical-align: top; }
th { background: #eee; }
img { max-width: 100%; height: auto; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0.4em 0; page-break-inside: avoid; flex: 1 1 520px; max-width: 100%; }
figcaption { font-size: 8pt; color: #555; }
pre { white-space: pre-wrap; font-size: 7.5pt; background: #f7f7f7; padding: 0.5em; }
.note { color: #555; font-size: 8.5pt; }
.glance { background: #f5f8fc; border: 1px solid #c9d6e8; padding: 0.6em 1em; margin: 0.8em 0; }
.glance h2 { margin-top: 0.2em; border: none; }
.howto { font-size: 8.5pt; color: #333; }
.howto li { margin: 0.15em 0; }
@page { size: A4; margin: 12mm; }
@media print { body { max-width: none; margin: 0; } figure { flex-basis: 100%; } }
"""

HOW_TO_READ = [
    "Each cell is one dataset and architecture; every method in it had the same tuning budget (trials x epochs) "
    "and was then re-run on distinct seeds. BP on the same cell and machine is the reference.",
    "\"Matches BP within the seed noise\" means Welch's t-test on the seeds' test accuracies, corrected with "
    "Holm-Bonferroni over every comparison on the page, found no difference at the 5% level. It is not proof of "
    "equality: with 3 seeds only differences of a few tenths of a point can show.",
    "\"Budget too small to tell\" means a validation curve was still rising when the epochs ran out: no claim is "
    "made either way; raise train.epochs (or tuning.max_epochs) to find out. \"Unstable\" means a run's training "
    f"loss later rose more than {UNSTABLE_RISE - 1:.0%} above its first epoch's mean and stayed there (in two of "
    "three consecutive epochs): no claim is made either way.",
    "Cost ratios divide a method's mean by BP's on the same machine: 0.5x is half of BP's cost. Energy marked † "
    "is an estimate (CodeCarbon), not a measurement; the Sources table names where every figure came from. A time, "
    "energy or emissions ratio marked ‡ compares with BP runs made while the machine ran at another speed: their "
    f"speed probes (an fp32 matmul before and after each run) differ by more than {SPEED_TOLERANCE:.0%}, or, in records without a "
    "probe, the runs share no day. One machine can run the same code at another speed from one day to the next, "
    "so that ratio carries the machine's change too.",
]


def table_html(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "<p class='note'>(none)</p>"
    return frame.to_html(index=False, escape=True, border=0, na_rep="–")


def figure_html(fig: dict) -> str:
    caption = html.escape(fig["caption"])
    return (f"<figure><img alt='{caption}' src='data:image/png;base64,{fig['data']}'>"
            f"<figcaption>{caption}</figcaption></figure>")


def learning_section(tables: dict, figures: list[dict]) -> list[str]:
    """"How each method learns": alignment with BP, per-layer read-outs, robustness, each with its
    one-line reading guide (runs recorded with diagnostics on)."""
    by_name = {fig["name"]: fig for fig in figures}
    parts = ["<h2>How each method learns</h2><p class='note'>Diagnostics (benchmark/diagnostics.py), measured apart "
             "from training: their time is in no figure above, and turning them on does not change a weight.</p>"]
    guides = {  # table -> (heading, its one-line reading guide)
        "alignment": ("Alignment with backprop", "How to read: a cosine of 1 means the layer's update points where BP's "
                      "gradient does on the same batch (BP itself is 1); 0 means unrelated; a rising line means the method "
                      "learns to follow BP. An empty layer has no BP-comparable loss, and the table says why. The weight angle "
                      "(feedback alignment) falls as the forward weights come to align with the fixed feedback matrices."),
        "probes": ("Per-layer read-outs", "How to read: the test accuracy of a linear probe on each layer's representation "
                   "after training; a line that keeps rising means deeper layers add separable information, a flat or "
                   "falling one that the accuracy is made early."),
        "robustness": ("Robustness", "How to read: test accuracy on the same test images under Gaussian input noise and "
                       "under FGSM, both in pixel units of the [0, 1] image; compare each column with the clean one and with "
                       "BP's row. FGSM differentiates each method's own prediction (its method note says how)."),
    }
    for name, (heading, guide) in guides.items():
        if tables[name].empty:
            continue
        parts.append(f"<h3>{heading}</h3><p class='note'>{guide}</p>")
        if name in by_name:  # the figure named after its table, where there is one
            parts.append(figure_html(by_name[name]))
        parts.append(table_html(tables[name]))
    return parts


def render_html(ctx: dict) -> str:
    e = html.escape
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>bpfree-bench: {e(ctx['experiment'])}</title>"
             f"<style>{CSS}</style></head><body>"]
    parts.append(f"<h1>bpfree-bench report: {e(ctx['experiment'])}</h1>")
    parts.append(f"<p class='note'>{ctx['n_final']} final runs, {ctx['n_trials']} tuning trials, "
                 f"{ctx['n_failed']} failed or diverged runs. Generated {e(ctx['provenance']['generated'])}.</p>")
    parts.append(f"<p><b>{e(ctx['budget'])}</b></p>")
    if ctx.get("superseded"):
        parts.append(f"<p class='note'>{e(ctx['superseded'])}</p>")
    parts.append("<div class='glance'><h2>At a glance: each method against BP</h2>")
    parts.append(table_html(ctx["glance"]) if not ctx["glance"].empty else
                 "<p class='note'>No method shares a cell (dataset, architecture, machine) with BP here.</p>")
    parts.append("<ul class='howto'>" + "".join(f"<li>{e(line)}</li>" for line in HOW_TO_READ) + "</ul></div>")
    limited = [r for r in ctx["rows"] if r.convergence.rising]
    unstable = [r for r in ctx["rows"] if r.convergence.unstable]
    if unstable:
        parts.append(f"<p class='note'>Unstable training (the training loss more than {UNSTABLE_RISE - 1:.0%} above the "
                     "first epoch's mean in two of three consecutive epochs, however good the accuracy): " + e("; ".join(
                         f"{r.method} on {r.dataset}/{r.arch} ({r.convergence.unstable_seeds()})" for r in unstable))
                     + ". No comparison below claims better or worse for these cells; a lower learning rate is the "
                     "usual cure.</p>")
    if limited:
        parts.append("<p class='note'>Not converged at this budget (validation accuracy still rising over the final third of "
                     "the epochs beyond the seed noise): " + e(", ".join(f"{r.method} on {r.dataset}/{r.arch}" for r in limited))
                     + ". No comparison below claims better or worse for these cells; a larger budget is needed to tell.</p>")
    parts.append("<h2>Summary</h2><p class='note'>Test accuracy: mean over the final seeds with the half-width of its 95% "
                 "confidence interval (Student t). Costs: mean over the same runs; relative figures compare with BP on the "
                 "same dataset and architecture. † marks an estimate (see Sources); ‡ a time, energy or emissions ratio "
                 f"against BP runs made at another machine speed (speed probes more than {SPEED_TOLERANCE:.0%} apart, or, without probes, "
                 "no shared day).</p>")
    parts.append(table_html(ctx["summary"]))
    parts.append("<h2>Significance against BP</h2><p class='note'>Test: Welch's t-test (scipy.stats.ttest_ind, "
                 "equal_var=False) on the final seeds' test accuracies, two-sided, 5% level, after the Holm-Bonferroni "
                 "correction over every comparison listed here (statsmodels' multipletests); raw and adjusted p are both "
                 "shown. A difference under 1 pp that is still significant is called small.</p><ul>")
    parts += [f"<li>{e(s['sentence'])}</li>" for s in ctx["significance"]] or ["<li>No method shares a cell with BP.</li>"]
    parts.append("</ul>")
    relative = ctx.get("relative_targets") or []
    parts.append("<h2>Across workloads: performance profiles</h2><p class='note'>Target per dataset, checked against "
                 "validation accuracy after each epoch: the dataset's fixed target (its YAML's target_accuracy, the same for "
                 "every run and machine): " + e(", ".join(f"{k}: {v * 100:.2f}%" for k, v in ctx["targets"].items())) + "."
                 + (f" No fixed target for {e(', '.join(relative))}: there it is {ctx['target_fraction']:.2f} x the best "
                    "method's mean final test accuracy of these runs, which moves when a method is added." if relative else "")
                 + "</p>")
    parts.append(table_html(ctx["costs_table"]))
    if not ctx["depth_table"].empty:
        from benchmark.report.numbers import DEPTH_COLUMNS

        parts.append("<h2>Scaling with depth</h2><p class='note'>Does a method's memory stay flat as layers are added, "
                     "where it says it does, and at what time cost? BP with activation checkpointing (bp_checkpoint, "
                     "dashed) is the fair memory baseline: BP can trade compute for memory too. The three memory "
                     "figures differ, sometimes by a lot: " + "; ".join(f"<b>{e(label)}</b>: {e(src)}" for _, label, src in DEPTH_COLUMNS[:2])
                     + ". On a CPU the process RSS includes the framework itself (about 0.8 GB here), so its changes "
                     "with depth matter more than its level.</p>")
        parts += [figure_html(fig) for fig in ctx["depth_figures"]]
        parts.append(table_html(ctx["depth_table"]))
    learning = ctx.get("learning") or {}
    if any(not t.empty for t in learning.values()):
        parts += learning_section(learning, ctx["learning_figures"])
    if ctx["reproduction"]:
        parts.append("<h2>Reproduction of published figures</h2><p class='note'>Ours is always the harness's figure "
                     "(the best-validation epoch, then the test set once); where the runs recorded the test accuracy "
                     "after every epoch, ours is also read the paper's way, and the verdict compares like with like. "
                     "A paper that read its figure off the best test epoch selected on the test set. "
                     "'not held': the paper has a figure for the cell that the project could not read; "
                     "ours is shown at the paper's settings, with no verdict.</p>")
        parts.append(table_html(reproduction_display(ctx["reproduction"])))
    parts.append("<h2>Figures</h2><p class='note'>One colour per method in every figure (BP first).</p><div class='figures'>")
    parts += [figure_html(fig) for fig in ctx["figures"]]
    parts.append("</div>")
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
    for key in ("hardware", "machine speed", "python", "git_sha", "budget", "seeds", "dates", "storage", "dashboard", "n_records"):
        parts.append(f"<tr><th>{e(key)}</th><td>{e(str(p[key]))}</td></tr>")
    parts.append(f"<tr><th>packages</th><td>{e(', '.join(f'{k} {v}' for k, v in p['packages'].items()))}</td></tr>")
    for name, fp in p["fingerprints"].items():
        parts.append(f"<tr><th>data: {e(name)}</th><td>sha256 {e(str(fp['sha256']))}; canonical: {e(str(fp['canonical']))} "
                     f"({e(str(fp['basis']))}); {e(fp['splits'])}</td></tr>")
    parts.append("</table></body></html>")
    return "\n".join(parts)


def write_pdf(page: str, out: Path) -> None:
    import logging

    from weasyprint import HTML

    logging.getLogger("weasyprint").setLevel(logging.ERROR)
    logging.getLogger("fontTools").setLevel(logging.ERROR)
    HTML(string=page, base_url=str(out)).write_pdf(out / "report.pdf")
