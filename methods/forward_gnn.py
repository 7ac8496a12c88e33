"""Forward learning of graph neural networks: `fgnn_ff` (forward-forward with label appending),
`fgnn_sf` (single forward with virtual class nodes) and `fgnn_sf_topdown` (single forward with
top-down signals from the layers above).

Park, Wang, Simoulin, Yang, Yang, Rossi, Trivedi, Ahmed, "Forward Learning of Graph Neural
Networks", ICLR 2024; reference code facebookresearch/forwardgnn (src/forward_learning/nodeclass:
gnn_ff_with_label_appending.py, gnn_sf.py, gnn_top2loss_sf.py; loss.py; train_forward.py), read
for the details below.

`fgnn_ff` and `fgnn_sf` train a stack of graph layers (the arch's GCNConv or SAGEConv + ReLU, one per
width, each fed the previous layer's output L2-normalised per node; `arch.head` is BP's and unused here) one layer at a time, each with its own Adam optimiser and
its own early stopping on validation accuracy: layer k trains while layers < k are frozen and
their output is a constant input. No gradient crosses a layer (the audit checks it).

`fgnn_ff`, forward-forward (the paper's FF + label appending, "FF-LA"):
- Local loss: layer k's goodness g = Σ_j h_j² − θ (θ = 2) of each training node, logistic:
  softplus(−g) on the positive graph plus the mean over negative graphs of softplus(g).
- Positives and negatives: every node's features get a C-wide label vector appended: the true
  one-hot on training nodes and the uniform 1/C vector on the others (positive graph); each
  negative graph puts one wrong class's one-hot on every training node (the reference uses up to
  100 negatives, so all C−1 wrong classes: `n_negatives`).
- Prediction: for each candidate class c, the graph with c appended on the nodes to classify and
  the true labels on the training nodes; the class whose goodness (mean of h², minus θ) summed
  over the trained layers is highest wins.

`fgnn_sf_topdown`, single forward with top-down signals (the paper's SF-Top2Loss,
`gnn_top2loss_sf.py`): every layer trains at every epoch, all together. Each layer keeps a state
per node (its last, normalised, output). Layer k's loss is SF's cross-entropy computed on the mean
of its own fresh output and the *previous epoch's* states of the layers above k+1 (detached: a
top-down signal without backpropagation); that mean, normalised, is layer k's new state. Gradients
are clipped to norm 1 per layer (the reference's). Prediction: a fresh bottom-up pass gives the
states; per layer the same mean, softmax over the class nodes, probabilities summed over layers.

`fgnn_sf`, single forward (the paper's SF, no negative inputs):
- The graph gets C virtual nodes, one per class, with fixed random N(0, 1) features; every
  training node is joined to its class's virtual node in both directions.
- Local loss: layer k's softmax cross-entropy of the dot products between a training node's
  output and the C virtual nodes' outputs (temperature 1), against its label.
- Prediction: each trained layer's softmax over those dot products for the node to classify,
  summed over layers (returned as the log of their mean).

Checked against the reference code run on this project's CPU (README, Graphs): its FF-LA layer 0
on Cora-ML split 0 falls from 74.6 % validation accuracy at initialisation to the majority class
(27.1 %) by epoch 40 and climbs back only after epoch ~180; `fgnn_ff` follows the same path
(27.1 % from epoch 50, 52.9 % at epoch 320 against the reference's 52.5 %).

Where this differs from the reference code:
- Budget: `layer_epochs: split` (default) gives each layer train.epochs // L epochs so that the
  whole run costs what BP's does at equal train.epochs; `each` gives every layer the full
  train.epochs, the reference's protocol (1,000 epochs per layer, and 1,000 for BP).
- Validation every epoch and patience in epochs (the reference validates every 2nd epoch, with
  patience 100 validations); set train.patience=200 for its stopping rule.
- Labels shown at prediction: the reference appends (FF) the training nodes' labels when it
  scores validation nodes, and the training and validation nodes' labels when it scores test
  nodes; this harness's prediction has one rule for both, the training nodes' labels only (the
  validation labels are never an input), which can only cost accuracy.
- The optimiser settings come from the YAML (Adam, lr 1e-3, weight decay 5e-4: the reference's).
- `fgnn_sf_topdown`: the reference's first bottom-up pass feeds each layer its predecessor's raw
  output (layer 0 the raw features), while its training feeds each layer the normalised state;
  here both feed the normalised state (each layer normalises its input, as in the other variants).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from benchmark import archs
from benchmark.spec import Locality, Method, Phase, register
from methods._optim import OptimizerHyper, make_optimizer


def normalise_rows(h: torch.Tensor) -> torch.Tensor:
    """Each node's features divided by their L2 norm (the reference's LayerNormalization): a layer
    sees the direction of the previous layer's output, not its goodness."""
    return h / (h.norm(dim=1, keepdim=True) + 1e-8)


@dataclass
class ForwardGNNHyper(OptimizerHyper):
    layer_epochs: str = field(default="split", metadata={"choices": ("split", "each")})


class ForwardGNN(Method):
    """What both variants share: a stack of graph layers trained one per phase."""

    supported_archs = archs.GRAPH_KINDS
    locality = Locality("layer", "each graph layer has its own local loss and optimiser; its input is detached")

    def __init__(self, arch, input_shape, num_classes, hp, device, graph: archs.Graph | None = None):
        super().__init__(arch, input_shape, num_classes, hp, device)
        if graph is None:
            raise ValueError(f"{self.name} trains on a graph dataset only")
        self.graph = graph
        # The arch's own graph layers, built for this variant's input width (FF appends the label).
        self.modules["layers"] = archs.build(arch, (self.input_width(int(input_shape[0])),)).blocks.to(device)
        self.optimizers = [make_optimizer(hp.optimizer, layer.parameters(), hp.lr, hp.weight_decay, hp.momentum)
                           for layer in self.modules["layers"]]
        self.current = 0  # the layer being trained; layers <= current predict
        self.train_nodes = self.train_labels = None
        self.layer_input = None  # the current layer's (detached) input, cached per phase
        # What the frozen layers (< current) contribute to a prediction, per phase: they do not
        # change within a phase, so only the layer being trained is run at each validation.
        self.frozen_prediction: dict = {}

    def input_width(self, features: int) -> int:
        return features

    # -- the schedule: one phase per layer, each with its own early stopping --------------------
    def phases(self, epochs):
        n = len(self.modules["layers"])
        per_layer = epochs if self.hp.layer_epochs == "each" else max(1, epochs // n)
        return [Phase(f"layer{i}", per_layer) for i in range(n)]

    def start_phase(self, phase, train_x, train_y, total_steps):
        self.current = int(phase.name.removeprefix("layer"))
        self.prepare_once(train_x, train_y)
        self.frozen_prediction = {}
        with torch.no_grad():
            self.layer_input = self.input_of_layer(self.current)

    def units(self):
        return {f"layer{i}": list(layer.parameters()) for i, layer in enumerate(self.modules["layers"])}

    def frozen_parameters(self):
        return [p for i, layer in enumerate(self.modules["layers"]) if i != self.current for p in layer.parameters()]

    def layer(self, i: int, h: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        return self.modules["layers"][i](normalise_rows(h), edges)

    def step(self, loss: torch.Tensor) -> torch.Tensor:
        optimizer = self.optimizers[self.current]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    def prepare_once(self, train_nodes: torch.Tensor, train_labels: torch.Tensor) -> None:
        """The variant's graph (labels appended, or class nodes added), built at the first phase."""
        if self.train_nodes is None:
            self.train_nodes, self.train_labels = train_nodes, train_labels
            self.prepare_graph(train_nodes, train_labels)

    # -- what each variant defines ----------------------------------------------------------------
    def prepare_graph(self, train_nodes: torch.Tensor, train_labels: torch.Tensor) -> None:
        raise NotImplementedError

    def input_of_layer(self, k: int):
        raise NotImplementedError


# ------------------------------------------------------------------------------------------------
# Forward-forward with label appending


@dataclass
class FGNNFFHyper(ForwardGNNHyper):
    theta: float = field(default=2.0, metadata={"ge": 0})  # the goodness threshold (reference --ff-theta)
    n_negatives: int = field(default=100, metadata={"ge": 1})  # negative graphs per step, at most C-1


@register
class ForwardGNNFF(ForwardGNN):
    name = "fgnn_ff"
    Hyper = FGNNFFHyper

    def input_width(self, features):
        return features + self.num_classes  # the appended label vector

    def label_block(self, known: torch.Tensor | None = None, known_labels: torch.Tensor | None = None,
                    asked: torch.Tensor | None = None, asked_class: torch.Tensor | None = None) -> torch.Tensor:
        """Every node's appended label vector: uniform 1/C, the one-hot of `known_labels` on
        `known` nodes, and the one-hot of `asked_class` (per node, or one class) on `asked` nodes."""
        c = self.num_classes
        labels = torch.full((self.graph.num_nodes, c), 1.0 / c, device=self.graph.features.device)
        if known is not None:
            labels[known] = F.one_hot(known_labels, c).float()
        if asked is not None:
            labels[asked] = F.one_hot(asked_class, c).float().expand(len(asked), c)
        return torch.cat([self.graph.features, labels], dim=1)

    def prepare_graph(self, train_nodes, train_labels):
        """The positive graph and the negative graphs (one wrong class per training node in each),
        drawn once, as the reference does. With n_negatives >= C-1 every wrong class is used."""
        c = self.num_classes
        n_neg = min(self.hp.n_negatives, c - 1)
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,)).item()))
        # For each training node a random order of its C-1 wrong classes; negative graph j takes the j-th.
        offsets = torch.argsort(torch.rand(len(train_labels), c - 1, generator=generator), dim=1) + 1
        wrong = (train_labels.cpu()[:, None] + offsets) % c
        self.positive = self.label_block(train_nodes, train_labels)
        self.negatives = [self.label_block(train_nodes, wrong[:, j].to(train_labels.device)) for j in range(n_neg)]

    def input_of_layer(self, k):
        """The positive and negative graphs' inputs to layer k (outputs of the frozen layers < k)."""
        edges = self.graph.edge_index
        graphs = [self.positive, *self.negatives]
        for i in range(k):
            graphs = [self.layer(i, h, edges) for h in graphs]
        return graphs

    def goodness(self, h: torch.Tensor) -> torch.Tensor:
        return h.pow(2).sum(dim=1) - self.hp.theta

    def train_step(self, x, y, idx):
        """Layer `current`'s forward-forward loss on the training nodes in the batch `x`."""
        edges = self.graph.edge_index
        positive, *negatives = self.layer_input
        g_pos = self.goodness(self.layer(self.current, positive, edges)[x])
        loss = F.softplus(-g_pos).mean()  # BCE with target 1
        if negatives:
            g_neg = [self.goodness(self.layer(self.current, h, edges)[x]) for h in negatives]
            loss = loss + torch.stack([F.softplus(g).mean() for g in g_neg]).mean()  # target 0, mean over graphs
        return self.step(loss)

    def prediction_goodness(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return h[x].pow(2).mean(dim=1) - self.hp.theta  # the reference's: mean, not sum, of h²

    def frozen_layers_asking(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per candidate class c: the frozen layers' output on the graph asking c at `x`, and their
        goodness summed at `x`. Computed once per phase and node set (validation, test)."""
        key = x.cpu().numpy().tobytes()
        if key not in self.frozen_prediction:
            edges, per_class = self.graph.edge_index, []
            for c in range(self.num_classes):
                h = self.label_block(self.train_nodes, self.train_labels, x, torch.tensor(c, device=x.device))
                total = torch.zeros(len(x), device=x.device)
                for i in range(self.current):
                    h = self.layer(i, h, edges)
                    total += self.prediction_goodness(h, x)
                per_class.append((h, total))
            self.frozen_prediction[key] = per_class
        return self.frozen_prediction[key]

    @torch.no_grad()
    def predict(self, x):
        edges = self.graph.edge_index
        scores = [total + self.prediction_goodness(self.layer(self.current, h, edges), x)
                  for h, total in self.frozen_layers_asking(x)]
        return torch.stack(scores, dim=1)


# ------------------------------------------------------------------------------------------------
# Single forward with virtual class nodes


@dataclass
class FGNNSFHyper(ForwardGNNHyper):
    temperature: float = field(default=1.0, metadata={"gt": 0})


@register
class ForwardGNNSF(ForwardGNN):
    name = "fgnn_sf"
    Hyper = FGNNSFHyper

    def __init__(self, arch, input_shape, num_classes, hp, device, graph=None):
        super().__init__(arch, input_shape, num_classes, hp, device, graph)
        # The virtual nodes' features: random, fixed (nn.Embedding's N(0, 1) init in the reference).
        self.modules.register_buffer("virtual_features", torch.randn(num_classes, int(input_shape[0]), device=device))
        self.frozen_outputs: list[torch.Tensor] = []  # layers < current, on every node (input_of_layer)

    @property
    def virtual(self) -> slice:
        """Where the virtual class nodes sit in the augmented graph: after the real ones."""
        return slice(self.graph.num_nodes, self.graph.num_nodes + self.num_classes)

    def prepare_graph(self, train_nodes, train_labels):
        """The graph plus C virtual nodes, each training node joined to its class's, both ways."""
        class_nodes = self.graph.num_nodes + train_labels
        extra = torch.stack([torch.cat([train_nodes, class_nodes]), torch.cat([class_nodes, train_nodes])])
        self.edges = torch.cat([self.graph.edge_index, extra], dim=1)
        self.features = torch.cat([self.graph.features, self.modules.virtual_features])

    def input_of_layer(self, k):
        """Layer k's input, the frozen layers' output; their outputs are kept for prediction."""
        h, self.frozen_outputs = self.features, []
        for i in range(k):
            h = self.layer(i, h, self.edges)
            self.frozen_outputs.append(h)
        return h

    def class_logits(self, h: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        """(nodes, C): each node's output dotted with each virtual class node's output."""
        return h[nodes] @ h[self.virtual].T / self.hp.temperature

    def train_step(self, x, y, idx):
        h = self.layer(self.current, self.layer_input, self.edges)
        return self.step(F.cross_entropy(self.class_logits(h, x), y))

    @torch.no_grad()
    def predict(self, x):
        # The frozen layers' outputs were computed at the phase's start (input_of_layer): only the
        # layer being trained is run here.
        outputs = [*self.frozen_outputs, self.layer(self.current, self.layer_input, self.edges)]
        probabilities = sum(self.class_logits(h, x).softmax(dim=1) for h in outputs)
        return (probabilities / len(outputs)).log()


# ------------------------------------------------------------------------------------------------
# Single forward with top-down signals (SF-Top2Loss)


@dataclass
class FGNNSFTopDownHyper(FGNNSFHyper):
    grad_max_norm: float = field(default=1.0, metadata={"gt": 0})  # per layer (reference --grad-max-norm)


@register
class ForwardGNNSFTopDown(ForwardGNNSF):
    name = "fgnn_sf_topdown"
    Hyper = FGNNSFTopDownHyper

    def __init__(self, arch, input_shape, num_classes, hp, device, graph=None):
        super().__init__(arch, input_shape, num_classes, hp, device, graph)
        self.states: list[torch.Tensor] = []  # per layer k, its last output state (index 0: the input)

    # Every layer trains in every epoch: one phase, no layer frozen.
    def phases(self, epochs):
        return [Phase("all_layers", epochs)]

    def start_phase(self, phase, train_x, train_y, total_steps):
        self.prepare_once(train_x, train_y)
        self.states, _ = self.bottom_up()

    def frozen_parameters(self):
        return []

    @torch.no_grad()
    def bottom_up(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """A plain forward pass: the states (the normalised input, then each layer's normalised
        output) and each layer's output itself."""
        states, outputs = [normalise_rows(self.features)], []
        for i in range(len(self.modules["layers"])):
            outputs.append(self.layer(i, states[-1], self.edges))
            states.append(normalise_rows(outputs[-1]))
        return states, outputs

    def with_top_down(self, k: int, output: torch.Tensor, states: list[torch.Tensor]) -> torch.Tensor:
        """Layer k's output averaged with the states of the layers above its own (k+2.. in `states`)."""
        return torch.stack([output, *(s.detach() for s in states[k + 2:])]).mean(dim=0)

    def train_step(self, x, y, idx):
        """One epoch of every layer, bottom to top, each against the states of the epoch before."""
        new_states, losses = [self.states[0]], []
        for k, (layer, optimizer) in enumerate(zip(self.modules["layers"], self.optimizers)):
            mixed = self.with_top_down(k, self.layer(k, self.states[k].detach(), self.edges), self.states)
            loss = F.cross_entropy(self.class_logits(mixed, x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(layer.parameters(), self.hp.grad_max_norm)
            optimizer.step()
            new_states.append(normalise_rows(mixed.detach()))
            losses.append(loss.detach())
        self.states = new_states
        return torch.stack(losses).mean()

    @torch.no_grad()
    def predict(self, x):
        states, outputs = self.bottom_up()  # layer k's output on states[k]: what its loss is computed on
        probabilities = sum(self.class_logits(self.with_top_down(k, out, states), x).softmax(dim=1)
                            for k, out in enumerate(outputs))
        return (probabilities / len(outputs)).log()
