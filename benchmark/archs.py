"""Architectures, in one place, as ordered lists of blocks.

A network is `Blocks`: an `nn.ModuleList` of blocks applied in order plus the shape each block
emits. Layer-local methods train and detach block by block; end-to-end methods chain them and add
a linear head. Presets live in configs/arch/*.yaml.

- `mlp`: flatten, then per width a block Linear -> ReLU.
- `cnn`: the 3-block CNN of Cascaded-Forward and its BP baseline: per block
  conv3x3 (padding 1) -> ReLU -> maxpool 2 -> BatchNorm, channels 32, 128, 512.
- `lenet`: LeNet-5 as BioTorch benchmarks feedback alignment on MNIST (Sanfiz & Akrout 2021,
  jsalbert/biotorch `le_net.py`, LeNetMNIST): conv5x5 6 -> ReLU -> maxpool 2, conv5x5 16 -> ReLU ->
  maxpool 2, conv5x5 120 -> ReLU, then Linear 84 -> ReLU; the head is the linear layer to the
  classes. It needs 32x32 inputs (BioTorch resizes MNIST to 32x32: dataset.resize=32). `init:
  xavier` is BioTorch's benchmark initialisation (Xavier-uniform weights, zero biases).
- `resnet`: ResNet-18-style (He et al. 2016, CIFAR variant): a 3x3 stem, then four stages of
  two basic residual blocks each at widths w, 2w, 4w, 8w (stride 2 from the second stage on).
  Every stem/residual block is one block of the list, so block-local methods cut between residual
  blocks, never inside one. `width` 64 is ResNet-18; small widths (8, 16) fit a CPU budget.
  Its head pools globally before the linear layer.
- `gcn`, `sage`: graph networks for node classification (torch_geometric): per width a block
  GCNConv (Kipf & Welling 2017) or GraphSAGE's mean-aggregation SAGEConv (Hamilton et al. 2017),
  then ReLU, as the ForwardGNN code's layers. A graph block takes (node features, edges) and
  returns every node's new features. The end-to-end network's head (`head`): `graph` (the archs'
  default), its last graph layer maps to the classes, no activation: torch_geometric's
  GCN/GraphSAGE with num_layers = len(widths) and out_channels = the classes, the ForwardGNN
  code's BP; or `linear`, every width's layer and then a linear layer on the node features.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from benchmark.errors import UserError
from benchmark.validate import check_fields


@dataclass
class Graph:
    """A node-classification graph on the device: every node's features (N, F) and the directed
    edges (2, E) message passing follows."""

    features: torch.Tensor
    edge_index: torch.Tensor

    @property
    def num_nodes(self) -> int:
        return int(self.features.shape[0])

    def to(self, device) -> "Graph":
        return Graph(self.features.to(device), self.edge_index.to(device))


@dataclass
class Blocks:
    blocks: nn.ModuleList
    out_shapes: list[tuple[int, ...]]  # shape of each block's output, batch dimension left out
    pool_head: bool = False  # the end-to-end head averages over space before its linear layer
    graph_conv: str | None = None  # "gcn" | "sage": the blocks are graph layers, called (h, edge_index)
    graph_head: bool = False  # the end-to-end network's last graph layer outputs the classes (arch.head=graph)
    init: str = "default"  # how the blocks were initialised: a method's head is initialised the same way

    def init_head(self, head: nn.Module) -> nn.Module:
        """A linear head initialised as the blocks were (BioTorch initialises its output layer too)."""
        if self.init == "xavier":
            xavier_init(head)
        return head

    def out_features(self, i: int) -> int:
        return int(torch.Size(self.out_shapes[i]).numel())


ACTIVATIONS = {"relu": nn.ReLU, "elu": nn.ELU, "tanh": nn.Tanh}


def mlp(input_shape: tuple[int, ...], widths: list[int], bias: bool = True, activation: str = "relu",
        depth: int | None = None, width: int | None = None) -> Blocks:
    """Flatten, then Linear -> activation per entry of `widths`. `depth` and `width` are what
    mlp_depth.yaml builds its widths from (kept in the config and the records); widths decides."""
    if activation not in ACTIVATIONS:
        raise UserError(f"arch.activation '{activation}' is unknown", f"choose one of: {', '.join(ACTIVATIONS)}")
    blocks, shapes, fan_in = [], [], int(torch.Size(input_shape).numel())
    for i, width in enumerate(widths):
        layers = [nn.Flatten()] if i == 0 else []
        layers += [nn.Linear(fan_in, width, bias=bias), ACTIVATIONS[activation]()]
        blocks.append(nn.Sequential(*layers))
        shapes.append((width,))
        fan_in = width
    return Blocks(nn.ModuleList(blocks), shapes)


def cnn(input_shape: tuple[int, ...], channels: list[int], kernel_size: int = 3) -> Blocks:
    in_ch, height, width = input_shape
    blocks, shapes = [], []
    for out_ch in channels:
        if height < 2 or width < 2:
            raise UserError(
                f"arch.channels={channels} pools the {input_shape[1]}x{input_shape[2]} input below 1 pixel",
                "use fewer blocks for this dataset",
            )
        blocks.append(
            nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.BatchNorm2d(out_ch),
            )
        )
        in_ch, height, width = out_ch, height // 2, width // 2
        shapes.append((out_ch, height, width))
    return Blocks(nn.ModuleList(blocks), shapes)


INITS = ("default", "xavier")  # default: PyTorch's own (Kaiming-uniform); xavier: BioTorch's


def lenet_side(size: int, pooled: bool, kernel_size: int) -> int:
    """The side of a LeNet convolution block's output for inputs of side `size` (no padding)."""
    size = size - kernel_size + 1
    return size // 2 if pooled else size


def check_image_size(arch_cfg: dict, size: int) -> None:
    """Before training: an arch that cannot take size x size images says so in one line."""
    if arch_cfg.get("kind") != "lenet":
        return
    channels, pool = arch_cfg["channels"], arch_cfg["pool"]
    if len(pool) != len(channels):
        raise UserError(f"arch.pool={list(pool)} needs one entry per arch.channels={list(channels)}",
                        "give a true/false per convolution")
    side = size
    for pooled in pool:
        side = lenet_side(side, pooled, arch_cfg.get("kernel_size", 5))
    if side < 1:
        raise UserError(f"arch {arch_cfg.get('name', 'lenet')} shrinks {size}x{size} images below 1 pixel",
                        "resize the images first (dataset.resize=32, as BioTorch does for MNIST)")


def lenet(input_shape: tuple[int, ...], channels: list[int], widths: list[int], pool: list[bool],
          kernel_size: int = 5, init: str = "default") -> Blocks:
    """Convolution blocks (conv, no padding -> ReLU (-> maxpool 2 where `pool` says)), then fully
    connected blocks (Linear -> ReLU, the first one flattening): LeNet-5's shape."""
    in_ch, height, width = input_shape
    check_image_size({"kind": "lenet", "channels": channels, "pool": pool, "kernel_size": kernel_size}, min(height, width))
    blocks, shapes = [], []
    for out_ch, pooled in zip(channels, pool):
        height, width = lenet_side(height, pooled, kernel_size), lenet_side(width, pooled, kernel_size)
        layers = [nn.Conv2d(in_ch, out_ch, kernel_size), nn.ReLU()] + ([nn.MaxPool2d(2)] if pooled else [])
        blocks.append(nn.Sequential(*layers))
        shapes.append((out_ch, height, width))
        in_ch = out_ch
    fan_in = int(torch.Size(shapes[-1]).numel())
    for i, out in enumerate(widths):
        layers = ([nn.Flatten()] if i == 0 else []) + [nn.Linear(fan_in, out), nn.ReLU()]
        blocks.append(nn.Sequential(*layers))
        shapes.append((out,))
        fan_in = out
    net = Blocks(nn.ModuleList(blocks), shapes, init=init)
    if init == "xavier":
        xavier_init(net.blocks)
    return net


def xavier_init(module: nn.Module) -> None:
    """BioTorch's `init: xavier`: Xavier-uniform weights and zero biases on every Linear and Conv2d."""
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a shortcut (1x1 conv where the shape changes)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(),
            nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False), nn.BatchNorm2d(out_ch),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


def resnet(input_shape: tuple[int, ...], width: int = 64, blocks_per_stage: int = 2) -> Blocks:
    in_ch, height, wide = input_shape
    stem = nn.Sequential(nn.Conv2d(in_ch, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
    blocks, shapes, ch = [stem], [(width, height, wide)], width
    for stage in range(4):
        out_ch = width * 2**stage
        for i in range(blocks_per_stage):
            stride = 2 if stage > 0 and i == 0 else 1
            blocks.append(BasicBlock(ch, out_ch, stride))
            height, wide = (height + stride - 1) // stride, (wide + stride - 1) // stride
            shapes.append((out_ch, height, wide))
            ch = out_ch
    return Blocks(nn.ModuleList(blocks), shapes, pool_head=True)


GRAPH_KINDS = ("gcn", "sage")


def import_pyg(module: str):
    """A torch_geometric module, imported only by graph runs, without the FutureWarning its import
    raises about torch.jit.script (it is torch_geometric's own use, nothing a run can act on)."""
    import importlib
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        return importlib.import_module(module)


def graph_conv(kind: str, fan_in: int, width: int) -> nn.Module:
    pyg_nn = import_pyg("torch_geometric.nn")

    if kind == "gcn":
        return pyg_nn.GCNConv(fan_in, width)  # symmetric normalisation with self-loops, as published
    return pyg_nn.SAGEConv(fan_in, width, aggr="mean")


class GraphBlock(nn.Module):
    """One message-passing layer over every node, then ReLU."""

    def __init__(self, kind: str, fan_in: int, width: int):
        super().__init__()
        self.conv = graph_conv(kind, fan_in, width)
        self.act = nn.ReLU()

    def forward(self, h: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(h, edge_index))


def gnn(input_shape: tuple[int, ...], widths: list[int], kind: str, head: str = "linear") -> Blocks:
    """Graph blocks of `widths`: the layers the forward GNN methods train, one per width. `head`
    is how the end-to-end network (BP's, `Chain`) classifies: "graph", its last graph layer maps
    to the classes instead of to widths[-1], with no activation after it, so that the network is
    torch_geometric's GCN / GraphSAGE with num_layers = len(widths) and out_channels = the classes
    (the ForwardGNN code's BP: the same number of graph layers as the forward methods); "linear",
    all len(widths) layers, then a linear map of each node's last features."""
    blocks, fan_in = [], int(input_shape[0])
    for width in widths:
        blocks.append(GraphBlock(kind, fan_in, width))
        fan_in = width
    return Blocks(nn.ModuleList(blocks), [(w,) for w in widths], graph_conv=kind, graph_head=head == "graph")


def gcn(input_shape: tuple[int, ...], widths: list[int], head: str = "linear") -> Blocks:
    return gnn(input_shape, widths, "gcn", head)


def sage(input_shape: tuple[int, ...], widths: list[int], head: str = "linear") -> Blocks:
    return gnn(input_shape, widths, "sage", head)


ARCHS = {"mlp": mlp, "cnn": cnn, "lenet": lenet, "resnet": resnet, "gcn": gcn, "sage": sage}


# The settings of each kind, with their ranges: every arch field is checked before training, as
# method and train settings are (an empty or zero-width layer list never reaches a run).
@dataclass
class MLPSchema:
    name: str = field(metadata={})
    kind: str = field(metadata={})
    widths: list[int] = field(metadata={"min_items": 1, "ge": 1})
    bias: bool = field(default=True, metadata={})
    activation: str = field(default="relu", metadata={"choices": tuple(ACTIVATIONS)})
    depth: int | None = field(default=None, metadata={"ge": 1})  # mlp_depth.yaml: widths = [width] * depth
    width: int | None = field(default=None, metadata={"ge": 1})


@dataclass
class CNNSchema:
    name: str = field(metadata={})
    kind: str = field(metadata={})
    channels: list[int] = field(metadata={"min_items": 1, "ge": 1})
    kernel_size: int = field(default=3, metadata={"ge": 1})


@dataclass
class LeNetSchema:
    name: str = field(metadata={})
    kind: str = field(metadata={})
    channels: list[int] = field(metadata={"min_items": 1, "ge": 1})
    pool: list[bool] = field(metadata={"min_items": 1})
    widths: list[int] = field(metadata={"ge": 1})
    kernel_size: int = field(default=5, metadata={"ge": 1})
    init: str = field(default="default", metadata={"choices": INITS})


@dataclass
class ResNetSchema:
    name: str = field(metadata={})
    kind: str = field(metadata={})
    width: int = field(default=64, metadata={"ge": 1})
    blocks_per_stage: int = field(default=2, metadata={"ge": 1})


@dataclass
class GNNSchema:
    name: str = field(metadata={})
    kind: str = field(metadata={})
    widths: list[int] = field(metadata={"min_items": 1, "ge": 1})
    head: str = field(default="linear", metadata={"choices": ("linear", "graph")})  # BP's classifier: see gnn()


SCHEMAS = {"mlp": MLPSchema, "cnn": CNNSchema, "lenet": LeNetSchema, "resnet": ResNetSchema, "gcn": GNNSchema, "sage": GNNSchema}


def validate(arch_cfg: dict) -> None:
    """The checks that need no input shape, run before any training (one-line UserError)."""
    kind = arch_cfg.get("kind")
    if kind not in ARCHS:
        raise UserError(f"unknown arch.kind '{kind}'", f"choose one of: {', '.join(ARCHS)}")
    check_fields("arch", SCHEMAS[kind], arch_cfg, f"configs/arch/{arch_cfg.get('name', kind)}.yaml")
    if kind == "mlp" and arch_cfg.get("depth") is not None:
        widths, depth, width = list(arch_cfg["widths"]), arch_cfg["depth"], arch_cfg.get("width")
        if len(widths) != depth or (width is not None and set(widths) != {width}):
            raise UserError(f"arch.depth={depth} (width {width}) disagrees with arch.widths={widths}",
                            "set arch.depth and arch.width on arch=mlp_depth, or arch.widths alone on the other MLPs")


def build(arch_cfg: dict, input_shape: tuple[int, ...]) -> Blocks:
    """Build the blocks of `arch_cfg` (a configs/arch/*.yaml mapping) for inputs of `input_shape`."""
    kind = arch_cfg["kind"]
    if kind not in ARCHS:
        raise UserError(f"unknown arch.kind '{kind}'", f"choose one of: {', '.join(ARCHS)}")
    params = {k: v for k, v in arch_cfg.items() if k not in ("kind", "name")}
    return ARCHS[kind](tuple(input_shape), **params)


def through(blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    """x through every block in order (prediction of methods that train blocks separately)."""
    for block in blocks:
        x = block(x)
    return x


class Chain(nn.Module):
    """Blocks applied in order, then a linear head: the end-to-end network BP trains.

    On a graph (`graph` given, graph blocks), the input is a tensor of node indices: the blocks run
    over the whole graph and the head's scores of those nodes are returned."""

    def __init__(self, net: Blocks, num_classes: int, graph: Graph | None = None):
        super().__init__()
        self.blocks = net.blocks
        self.graph, self.graph_head = graph, net.graph_head
        if (graph is None) != (net.graph_conv is None):
            raise ValueError("graph blocks need the graph, and only they take one")
        last = net.out_shapes[-1]
        if net.graph_head:  # the last graph layer maps to the classes itself, in place of its width (see gnn)
            self.blocks = net.blocks[:-1]
            self.head = graph_conv(net.graph_conv, net.blocks[-1].conv.in_channels, num_classes)
        elif net.pool_head:
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(last[0], num_classes))
        else:
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(net.out_features(len(net.blocks) - 1), num_classes))
        net.init_head(self.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.graph is not None:
            return self.on_graph(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    def on_graph(self, nodes: torch.Tensor) -> torch.Tensor:
        h, edges = self.graph.features, self.graph.edge_index
        for block in self.blocks:
            h = block(h, edges)
        if self.graph_head:  # it passes messages over the whole graph too
            return self.head(h, edges)[nodes]
        return self.head(h[nodes])
