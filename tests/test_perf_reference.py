"""`make perf`'s reference re-implementations (issue 18: a reference that does not learn proves
nothing about speed). Their times are `make perf`'s business; these check that each reference
learns, and that the perf table drops a comparison whose reference did not."""
from __future__ import annotations

import math
import os

import pytest
import torch

from benchmark import perf
from benchmark.data import Splits
from benchmark.perf_reference import REFERENCE_FF, reference_cafo_epoch, reference_ff_epoch
from tests.conftest import graph_root


def learnable_mnist_shaped(n_train: int = 3000, n_eval: int = 500) -> Splits:
    """Ten noisy prototypes of 28x28 images: learnable in an epoch or two, no dataset needed."""
    g = torch.Generator().manual_seed(0)
    prototypes = torch.rand(10, 1, 28, 28, generator=g)

    def draw(n):
        y = torch.randint(0, 10, (n,), generator=g)
        return (prototypes[y] + 0.3 * torch.randn(n, 1, 28, 28, generator=g)).clamp(0, 1), y

    (xt, yt), (xv, yv), (xs, ys) = draw(n_train), draw(n_eval), draw(n_eval)
    return Splits(xt, yt, xv, yv, xs, ys, 10)


def test_reference_ff_learns():
    # 2 epochs of 24 SGD steps: 0.94 validation accuracy here (chance 0.10). The earlier reference,
    # which scored labels by goodness instead of loeweX's read-out, sat below chance.
    _, accuracy = reference_ff_epoch(learnable_mnist_shaped(), [256, 256], epochs=2)
    assert accuracy > 0.4


def test_reference_cafo_learns():
    _, accuracy = reference_cafo_epoch(learnable_mnist_shaped(1000, 300), epochs=1)
    assert accuracy > 0.5


def test_reference_ff_settings_are_ours_to_run():
    # The perf script runs methods/ff.py with the reference's settings: every key must be one of
    # ff's hyperparameters, or the comparison would time two different things.
    from methods.ff import FFHyper

    names = set(FFHyper.__dataclass_fields__)
    assert set(REFERENCE_FF) <= names, set(REFERENCE_FF) - names


def test_a_reference_far_below_ours_drops_the_ratio(monkeypatch):
    rows = []
    monkeypatch.setattr(perf, "emit", lambda section, item, value, unit, note: rows.append((item, value, note)))
    perf.compare_with_reference("X", (1.0, 0.30), (2.0, 0.90), "n")  # the reference did not learn
    perf.compare_with_reference("Y", (1.0, 0.88), (2.0, 0.90), "n")  # it did
    ratios = {item: (value, note) for item, value, note in rows if item.endswith("ours / reference")}
    assert math.isnan(ratios["X: ours / reference"][0]) and "dropped" in ratios["X: ours / reference"][1]
    assert ratios["Y: ours / reference"][0] == 2.0


def test_the_methods_section_covers_every_registered_method_graph_ones_beside_bp_on_the_gcn():
    """`make perf --only methods` reports every method (issue 18); a graph method composed on an
    image dataset was refused and ended the whole section before this."""
    from benchmark import spec

    first_arch = {name: spec.get(name).supported_archs[0] for name in spec.names()}
    cells = perf.throughput_cells(first_arch)
    assert {name for _, name, _ in cells} == set(spec.names())
    graph = [(label, name) for label, name, arch in cells if arch in ("gcn", "sage")]
    assert ("bp (gcn)", "bp") in graph and len(graph) > 1
    on_gcn = perf.throughput_cells({"bp": "gcn", "fgnn_sf": "gcn"})  # --arch gcn: BP is there already
    assert sorted(on_gcn) == [("bp", "bp", "gcn"), ("fgnn_sf", "fgnn_sf", "gcn")]


def test_each_graph_cell_of_the_methods_section_builds_on_cora():
    from benchmark import spec

    root = graph_root()  # BPFREE_DATA, else laid out from ../shared/data; skips where neither exists
    data = perf.cora_or_none(root)
    assert data is not None and data.info["kind"] == "graph"
    first_arch = {name: spec.get(name).supported_archs[0] for name in spec.names()}
    for label, name, arch in perf.throughput_cells(first_arch):
        if arch in ("gcn", "sage"):
            method = perf.method_from_config(name, arch, data, torch.device("cpu"), [f"data.root={root}"], dataset="cora")
            assert method.phases(1), label


def test_without_cora_the_graph_rows_are_skipped_not_a_crash(tmp_path):
    assert perf.cora_or_none(tmp_path) is None


def test_moving_data_to_the_device_moves_a_graph_too():
    """The methods section moves Cora to --device with `Splits.to`; the copy it used before left the
    graph's features and edges on the CPU, and every graph row crashed on CUDA (seen on the H200,
    2026-11-28). The meta device stands in for CUDA here: every tensor, the graph's included, must
    land on it."""
    data = perf.cora_or_none(graph_root())
    moved = data.to(torch.device("meta"))
    tensors = [v for v in vars(moved).values() if isinstance(v, torch.Tensor)]
    tensors += [moved.graph.features, moved.graph.edge_index]
    assert len(tensors) == 8 and {t.device.type for t in tensors} == {"meta"}
    assert data.graph.features.device.type == "cpu"  # the original is left where it was


def test_ops_per_step_counts_the_operators_a_step_dispatches():
    """The methods section's launch count (what a launch-bound GPU step costs): a deeper network's
    step dispatches more operators, and a steady step counts the same each time (the section
    counts after training, past the optimiser's first step)."""
    data = learnable_mnist_shaped(256, 64)
    shallow = perf.method_from_config("bp", "mlp_2x256", data, torch.device("cpu"))
    deep = perf.method_from_config("bp", "mlp_5x256", data, torch.device("cpu"))
    for method in (shallow, deep):
        method.start_phase(method.phases(1)[0], data.train_x, data.train_y, 1)
        perf.ops_per_step(method, data)  # the optimiser's first step builds its state
    few, many = perf.ops_per_step(shallow, data), perf.ops_per_step(deep, data)
    assert 20 < few < many
    assert perf.ops_per_step(shallow, data) == few  # a steady step again: the same count


def test_the_convolution_rate_counts_flops_as_the_methods_rows_do():
    """The convolution rate printed beside the GEMM peak divides the FLOPs FlopCounterMode counts
    (the count behind every method's FLOP/s), so the two are comparable."""
    from torch.utils.flop_counter import FlopCounterMode

    conv, flops = perf.large_conv(batch=2, channels=8, size=6)
    with FlopCounterMode(display=False) as counter:
        conv()
    assert counter.get_total_flops() == flops


def test_the_methods_section_can_be_limited_to_named_methods(tmp_path, capsys):
    """`--methods` runs the methods section for those methods only (BP on the GCN joins graph ones
    as their baseline); an unknown name is a one-line error before anything runs."""
    import csv

    out = tmp_path / "perf.csv"
    perf.main(["--only", "methods", "--methods", "pepita", "--n-train", "256", "--device", "cpu", "--out", str(out)])
    items = {row["item"].split(":")[0] for row in csv.DictReader(open(out)) if ":" in row["item"]}
    assert items == {"pepita"}
    with pytest.raises(SystemExit):
        perf.main(["--only", "methods", "--methods", "pepita,nope", "--out", str(tmp_path / "x.csv")])
    assert "unknown method(s) nope in --methods" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_the_methods_section_runs_every_method_on_a_named_arch(tmp_path):
    """`--arch` puts every chosen method on that preset (the note names it); a method that does
    not train its kind gets a skipped row, not a crash."""
    import csv

    out = tmp_path / "perf.csv"
    perf.main(["--only", "methods", "--methods", "bp,noprop_fm,mf", "--arch", "cnn_narrow", "--n-train", "256",
               "--device", "cpu", "--out", str(out)])
    rows = [row for row in csv.DictReader(open(out)) if row["item"].endswith("training throughput")]
    by_method = {row["item"].split(":")[0]: row for row in rows}
    assert set(by_method) == {"bp", "noprop_fm", "mf"}
    for name in ("bp", "noprop_fm"):
        assert by_method[name]["note"].startswith("cnn_narrow,") and float(by_method[name]["value"]) > 0
    assert by_method["mf"]["note"] == "skipped: it does not train a cnn (cnn_narrow)"


@pytest.mark.parametrize("arguments, message", [
    (["--device", "tpu"], "--device: device='tpu' is not a device"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "cuda:99"], "--device: device=cuda"),
    (["--repeats", "0"], "--repeats 0 must be at least 1"),
    (["--n-train", "-5"], "--n-train -5 must be at least 1"),
    (["--overhead-epochs", "1"], "--overhead-epochs 1 must be at least 2"),
    (["--arch", "cnn_huge"], "unknown --arch cnn_huge; choose a configs/arch/ preset: cnn,"),
])
def test_bad_arguments_are_one_line_before_anything_is_measured(arguments, message, tmp_path, capsys):
    out, rows_before = tmp_path / "perf.csv", len(perf.ROWS)
    with pytest.raises(SystemExit) as stop:
        perf.main([*arguments, "--out", str(out)])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists() and len(perf.ROWS) == rows_before


def test_an_unwritable_out_is_refused_before_anything_is_measured(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as stop:
        perf.main(["--out", str(blocker / "perf.csv")])
    assert stop.value.code == 2 and "its folder is not writable" in capsys.readouterr().err


def test_the_probe_section_sets_the_probe_beside_bp_under_busy_processes(tmp_path, monkeypatch):
    """`perf --only probe` reports the quiet BP epoch and probe, then each one's speed beside one and
    two busy processes per core; the busy processes are gone afterwards."""
    monkeypatch.setattr(perf, "mnist_or_synthetic", lambda n: (learnable_mnist_shaped(600, 200), "prototypes"))
    started = []
    real_busy = perf.busy_processes

    def busy(count):
        spinning = real_busy(count)
        started.extend(spinning)
        return spinning

    monkeypatch.setattr(perf, "busy_processes", busy)
    perf.main(["--only", "probe", "--repeats", "1", "--device", "cpu", "--out", str(tmp_path / "perf.csv")])
    rows = {r["item"]: r for r in perf.ROWS}
    assert rows["quiet: BP epoch (s)"]["value"] > 0 and rows["quiet: speed probe (GFLOP/s)"]["value"] > 0
    for per_core in (1, 2):
        for what in ("BP speed", "probe"):
            assert 0 < rows[f"{per_core} busy process(es) per core: {what} vs quiet"]["value"] < 10
    assert len(started) == 3 * (os.cpu_count() or 1) and all(p.poll() is not None for p in started)


def test_the_probe_section_is_a_cpu_question(monkeypatch):
    monkeypatch.setattr(perf, "DEVICE", torch.device("cuda"))
    perf.ROWS.clear()
    perf.section_probe(1)
    assert [r["item"] for r in perf.ROWS] == ["skipped: a CPU question"]
