"""Graphs as a workload: node-classification data, the graph archs, what refuses them, and the
ForwardGNN methods' algorithm (issue 15). The methods' learning checks are in test_methods.py
(Cora, from their YAMLs) and their locality in test_audit.py."""
from __future__ import annotations

import pytest
import torch

from benchmark import config, runner
from benchmark.errors import UserError
from benchmark.spec import Phase
from tests.conftest import compose, graph_root


def graph_job(*overrides: str, dataset: str = "cora"):
    return compose(f"dataset={dataset}", f"data.root={graph_root()}", "measure.emissions=false", *overrides)


def test_planetoid_cora_is_its_standard_split_with_row_normalised_features():
    job = graph_job("method=bp", "arch=gcn")
    data = runner.load_data(job)
    assert (len(data.train_x), len(data.val_x), len(data.test_x)) == (140, 500, 1000)
    assert data.graph.num_nodes == 2708 and data.num_classes == 7 and data.input_shape == (1433,)
    nodes = [set(t.tolist()) for t in (data.train_x, data.val_x, data.test_x)]
    assert not (nodes[0] & nodes[1] or nodes[0] & nodes[2] or nodes[1] & nodes[2])
    sums = data.graph.features.sum(dim=1)
    assert torch.allclose(sums[sums > 0], torch.ones_like(sums[sums > 0]))
    assert data.info["kind"] == "graph" and data.info["split"] == 0


@pytest.mark.parametrize("split", [0, 3])
def test_cora_ml_uses_the_released_split_it_names(split):
    root = graph_root()
    data = runner.load_data(graph_job("method=bp", "arch=gcn", f"dataset.split={split}", dataset="cora_ml"))
    folder = root / "forwardgnn-splits" / "CitationFull-Cora_ML" / "node-5splits"
    for part, got in (("train", data.train_x), ("val", data.val_x), ("test", data.test_x)):
        released = torch.load(folder / f"{part}-node-index-split{split}.pt").long()
        assert torch.equal(got.cpu(), released)
    assert (len(data.train_x), len(data.val_x), len(data.test_x)) == (1916, 480, 599)
    assert data.graph.num_nodes == 2995 and data.input_shape == (2879,)


@pytest.mark.parametrize("overrides, dataset, message", [
    (["method=ff", "arch=gcn"], "cora", "does not support arch 'gcn'"),
    (["method=bp", "arch=mlp"], "cora", "is a graph"),
    (["method=fgnn_sf", "arch=sage", "dataset.split=5"], "cora_ml", "dataset.split=5 is out of range"),
    (["method=fgnn_sf", "arch=gcn", "dataset.split=1"], "cora", "dataset.split=1 is out of range"),
    (["method=bp", "arch=gcn", "diagnostics.enabled=true"], "cora", "image datasets only"),
    (["method=bp", "arch=gcn", "arch.head=conv"], "cora", "arch.head"),
])
def test_graph_mismatches_are_refused_before_training(overrides, dataset, message):
    with pytest.raises(UserError, match=message):
        graph_job(*overrides, dataset=dataset)


def test_a_graph_arch_on_images_is_refused():
    with pytest.raises(UserError, match="is a graph network"):
        compose("method=bp", "arch=gcn", "dataset=digits")


def test_a_method_that_trains_only_the_other_kind_is_named_with_the_fix():
    """An image-only method on a graph (on its own image arch) is told to change method or
    dataset, not arch, which it does not support; and a graph-only method on images likewise."""
    with pytest.raises(UserError) as image_method:
        graph_job("method=noprop_dt")
    message = str(image_method.value)
    assert "'noprop_dt' trains image networks only" in message
    assert "graph method: " in message and "fgnn_sf" in message and "bp" in message and "noprop_dt, " not in message
    with pytest.raises(UserError, match="'fgnn_ff' trains graph networks only"):
        compose("method=fgnn_ff", "dataset=digits")
    with pytest.raises(UserError) as both_kinds:  # BP trains both: the fix is the arch
        graph_job("method=bp", "arch=mlp")
    assert "trains" not in str(both_kinds.value) and "arch=gcn or arch=sage" in str(both_kinds.value)


def test_a_grid_skips_a_graph_method_on_images_and_says_why(tmp_path):
    """In a grid (skip_unsupported), a graph-only method's cell on an image dataset is skipped
    with the reason, the other cells run; a single run is refused."""
    jobs = config.preflight(["-m", "method=fgnn_ff,bp", "dataset=digits", "skip_unsupported=true", f"results_dir={tmp_path}"])
    by_method = {j.cfg.method.name: j for j in jobs}
    assert by_method["bp"].supported
    assert not by_method["fgnn_ff"].supported and "is a graph network" in by_method["fgnn_ff"].unsupported_because
    with pytest.raises(UserError, match="is a graph network"):
        config.preflight(["method=fgnn_ff", "dataset=digits", f"results_dir={tmp_path}"])


def test_missing_released_splits_are_named(tmp_path):
    with pytest.raises(UserError, match="released node splits of 'cora_ml' are not found"):
        compose("method=bp", "arch=gcn", "dataset=cora_ml", f"data.root={tmp_path}", "data.download=false")


def test_a_graph_step_is_the_whole_training_set(tmp_path):
    job = graph_job("method=bp", "arch=gcn", "train.epochs=2", f"results_dir={tmp_path}")
    record = runner.execute(job)
    assert record["status"] == "completed", record["error"]
    assert record["config"]["train"]["batch_size"] == 140
    assert record["config"]["train"]["batch_size_from"].startswith("the whole graph")
    assert record["metrics"]["train_samples"] == 2 * 140
    measured = record["measurements"]  # the same figures, units and sources as an image run's
    assert measured["flops_train"]["value"] > 0 and measured["flops_train"]["unit"] == "FLOP"
    assert measured["activation_memory"]["value"] > 0 and measured["activation_memory"]["unit"] == "B"
    assert measured["time_train"]["unit"] == "s" and measured["peak_memory"]["source"]


def built(name: str, *overrides: str):
    job = graph_job(f"method={name}", "arch=gcn", *overrides)
    data = runner.load_data(job)
    torch.manual_seed(0)
    method = config.build_method(job, data)
    method.start_phase(Phase("layer0", 1), data.train_x, data.train_y, 1)
    return method, data


def test_fgnn_ff_negatives_are_every_wrong_class_and_prediction_shows_only_training_labels():
    method, data = built("fgnn_ff")
    c, f = data.num_classes, data.input_shape[0]
    assert len(method.negatives) == c - 1  # n_negatives 100 >= C-1: all wrong classes
    train = data.train_x
    truth = method.positive[train, f:].argmax(1)
    assert torch.equal(truth, data.train_y)
    wrong = torch.stack([g[train, f:].argmax(1) for g in method.negatives])  # (C-1, n_train)
    assert not (wrong == data.train_y).any()
    assert all(len(set(col.tolist())) == c - 1 for col in wrong.T)  # each node sees every wrong class once
    others = torch.ones(data.graph.num_nodes, dtype=torch.bool)
    others[train] = False
    assert torch.allclose(method.positive[others, f:], torch.full((int(others.sum()), c), 1 / c))
    # Prediction: the validation node gets the candidate class, training nodes their labels, the rest uniform.
    seen = []
    original = method.label_block
    method.label_block = lambda *a: seen.append(a) or original(*a)
    method.predict(data.val_x[:5])
    assert len(seen) == c
    known, labels, asked = seen[0][0], seen[0][1], seen[0][2]
    assert torch.equal(known, train) and torch.equal(labels, data.train_y) and torch.equal(asked, data.val_x[:5])


def test_fgnn_ff_layer_loss_is_the_reference_logistic_goodness_loss():
    method, data = built("fgnn_ff")
    x = data.train_x
    layer = method.modules["layers"][0]
    before = [p.detach().clone() for p in layer.parameters()]
    edges = data.graph.edge_index

    def expected():
        def g(h):
            out = layer(h / (h.norm(dim=1, keepdim=True) + 1e-8), edges)[x]
            return out.pow(2).sum(1) - 2.0
        pos = torch.nn.functional.binary_cross_entropy_with_logits(g(method.positive), torch.ones(len(x)))
        neg = torch.stack([torch.nn.functional.binary_cross_entropy_with_logits(g(h), torch.zeros(len(x)))
                           for h in method.negatives]).mean()
        return pos + neg

    want = expected().item()
    got = method.train_step(x, data.train_y, None).item()
    assert got == pytest.approx(want, rel=1e-5)
    assert any(not torch.equal(p, b) for p, b in zip(layer.parameters(), before))


def test_fgnn_sf_joins_each_training_node_to_its_class_node_both_ways_and_nothing_else():
    method, data = built("fgnn_sf")
    n = data.graph.num_nodes
    extra = method.edges[:, data.graph.edge_index.shape[1]:]
    assert extra.shape[1] == 2 * len(data.train_x)
    pairs = {(int(a), int(b)) for a, b in extra.T}
    for node, label in zip(data.train_x.tolist(), data.train_y.tolist()):
        assert (node, n + label) in pairs and (n + label, node) in pairs
    touched = set(extra.flatten().tolist()) - set(range(n, n + data.num_classes))
    assert touched == set(data.train_x.tolist())  # no validation or test node is joined to a class node
    assert method.features.shape == (n + data.num_classes, data.input_shape[0])


def test_fgnn_sf_loss_is_cross_entropy_over_class_node_similarities():
    method, data = built("fgnn_sf")
    x, y = data.train_x, data.train_y
    h = method.modules["layers"][0](method.features / (method.features.norm(dim=1, keepdim=True) + 1e-8), method.edges)
    logits = h[x] @ h[data.graph.num_nodes:].T
    want = torch.nn.functional.cross_entropy(logits, y).item()
    assert method.train_step(x, y, None).item() == pytest.approx(want, rel=1e-5)


def test_fgnn_sf_topdown_trains_each_layer_on_its_output_mixed_with_the_states_above():
    """SF-Top2Loss: layer k's loss is SF's cross-entropy on the mean of its fresh output and the
    previous epoch's states of layers k+2.. (the layers above its own output); that mean,
    normalised, is its next state; and prediction runs a fresh bottom-up pass."""
    method, data = built("fgnn_sf_topdown", "arch.widths=[32,32,32]")
    x, y = data.train_x, data.train_y
    for _ in range(2):  # states that are not the bottom-up ones
        method.train_step(x, y, None)
    norm = lambda h: h / (h.norm(dim=1, keepdim=True) + 1e-8)  # noqa: E731
    old = [s.clone() for s in method.states]
    layers, n = method.modules["layers"], data.graph.num_nodes
    with torch.no_grad():
        mixed = [torch.stack([layers[k](norm(old[k]), method.edges), *old[k + 2:]]).mean(0) for k in range(3)]
    want = [torch.nn.functional.cross_entropy(m[x] @ m[n:].T, y).item() for m in mixed]
    assert method.train_step(x, y, None).item() == pytest.approx(sum(want) / 3, rel=1e-5)
    for k in range(3):
        assert torch.allclose(method.states[k + 1], norm(mixed[k]), atol=1e-6)
    assert torch.equal(method.states[0], old[0])
    with torch.no_grad():  # prediction: states from a fresh bottom-up pass, not the training ones
        states = [norm(method.features)]
        for k in range(3):
            states.append(norm(layers[k](states[k], method.edges)))
        probabilities = sum(torch.stack([layers[k](states[k], method.edges), *states[k + 2:]]).mean(0)[data.val_x]
                            .matmul(torch.stack([layers[k](states[k], method.edges), *states[k + 2:]]).mean(0)[n:].T)
                            .softmax(1) for k in range(3))
        assert torch.allclose(method.predict(data.val_x), (probabilities / 3).log(), atol=1e-5)


def uncached_prediction(method, x):
    """Both variants' prediction computed from scratch: every layer run on its whole graph."""
    edges, scores = method.graph.edge_index, []
    if method.name == "fgnn_ff":
        for c in range(method.num_classes):
            h = method.label_block(method.train_nodes, method.train_labels, x, torch.tensor(c))
            total = torch.zeros(len(x))
            for i in range(method.current + 1):
                h = method.layer(i, h, edges)
                total += h[x].pow(2).mean(1) - method.hp.theta
            scores.append(total)
        return torch.stack(scores, 1)
    h, probabilities = method.features, 0
    for i in range(method.current + 1):
        h = method.layer(i, h, method.edges)
        probabilities = probabilities + method.class_logits(h, x).softmax(1)
    return (probabilities / (method.current + 1)).log()


@pytest.mark.parametrize("name", ["fgnn_ff", "fgnn_sf"])
def test_prediction_runs_only_the_layer_in_training_and_equals_running_them_all(name):
    """The frozen layers' share of a prediction is kept per phase; it must equal recomputing it,
    and the layer being trained must be run afresh at every prediction."""
    method, data = built(name, "arch.widths=[32,32]")
    y = data.train_y
    for _ in range(3):
        method.train_step(data.train_x, y, None)
    method.start_phase(Phase("layer1", 1), data.train_x, y, 1)
    for x in (data.val_x, data.test_x, data.val_x):  # validation and test alternate (test_every_epoch)
        method.train_step(data.train_x, y, None)
        with torch.no_grad():
            assert torch.allclose(method.predict(x), uncached_prediction(method, x), atol=1e-5)


@pytest.mark.parametrize("kind", ["gcn", "sage"])
def test_bp_on_a_graph_arch_is_the_torch_geometric_network_whose_last_layer_outputs_the_classes(kind):
    """arch.head=graph (the graph archs' default; the ForwardGNN code's BP): widths [16, 16, 16]
    give torch_geometric's GCN / GraphSAGE with num_layers=3 and out_channels=C, no activation after
    the last layer, so BP has as many graph layers as the forward methods train: given the same
    weights, the same scores for every node asked for."""
    from benchmark import archs
    from torch_geometric.nn import GCN, GraphSAGE

    torch.manual_seed(0)
    features, edges = torch.rand(30, 12), torch.randint(0, 30, (2, 90))
    graph = archs.Graph(features, edges)
    blocks = archs.build({"kind": kind, "widths": [16, 16, 16], "head": "graph"}, (12,))
    assert len(blocks.blocks) == 3  # what a forward method trains: one layer per width
    ours = archs.Chain(blocks, 5, graph)
    theirs = (GCN if kind == "gcn" else GraphSAGE)(12, 16, num_layers=3, out_channels=5, dropout=0.0, act="relu")
    convs = [block.conv for block in ours.blocks] + [ours.head]
    for mine, reference in zip(convs, theirs.convs, strict=True):
        reference.load_state_dict(mine.state_dict())
    nodes = torch.tensor([3, 0, 17])
    assert torch.allclose(ours(nodes), theirs(features, edges)[nodes], atol=1e-6)
    # head=linear: every width's layer, then a linear map of the last layer's node features.
    linear = archs.Chain(archs.build({"kind": kind, "widths": [16, 16, 16], "head": "linear"}, (12,)), 5, graph)
    assert len(linear.blocks) == 3 and isinstance(linear.head, torch.nn.Sequential) and linear(nodes).shape == (3, 5)


def test_the_graph_archs_give_bp_the_forward_methods_depth_by_default():
    job = graph_job("method=bp", "arch=gcn")
    assert job.cfg.arch.head == "graph" and len(job.cfg.arch.widths) == 4
