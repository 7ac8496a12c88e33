"""Our DFA (hp.feedback=layer) beside BioTorch's own DFA LeNet, from the same start, on the same batches.

A check, not part of the harness: it needs a checkout of BioTorch (jsalbert/biotorch, 74fad0d) and its
extra packages (jsonschema, tensorboard) on the path, and is run by hand from the repository root:

    OMP_NUM_THREADS=1 PYTHONPATH=.:<biotorch checkout>:<its packages> \
        python docs/reproduction/sensitivity/reference_code/biotorch_dfa_side_by_side.py <rate> <seed> <epochs>

BioTorch's network is built by its code, seeded with <seed>; ours copies its forward weights and its
feedback matrices (B). Both then train with SGD (momentum 0.9, weight decay 1e-3, constant rate,
BioTorch's Benchmarks.md settings) on the same Fashion-MNIST batches, drawn by BioTorch's own data
pipeline (Resize 32, its fixed Normalize constants, batch 64) from $BPFREE_DATA (else ./data).
It prints how far apart the two networks' weights are after the first step (float rounding if the
updates are the same) and, every 300 steps and after every epoch, both training losses and both
test accuracies.
"""
import importlib
import os
import sys
import warnings

import torch

from benchmark import config, runner
from tests.conftest import compose

warnings.filterwarnings("ignore")  # BioTorch's layers use PyTorch's deprecated non-full backward hooks
biotorch_lenet = importlib.import_module("biotorch.models.dfa.le_net")
FashionMNIST = importlib.import_module("biotorch.datasets.fashion_mnist").FashionMNIST


def biotorch_network(seed):
    torch.manual_seed(seed)
    options = {"constrain_weights": False, "init": "xavier", "gradient_clip": False}
    net = biotorch_lenet.le_net_mnist(num_classes=10, layer_config={"type": "dfa", "options": options})
    m = net.module
    return net, [m.conv1, m.conv2, m.conv3, m.fc1, m.fc2]


def our_network(rate, biotorch_layers):
    """Our DFA on our LeNet, every weight, bias and B copied from BioTorch's network."""
    job = compose("method=dfa", "arch=lenet", "dataset=digits", "dataset.resize=32", "method.hp.feedback=layer",
                  "method.hp.optimizer=sgd", f"method.hp.lr={rate}", "method.hp.momentum=0.9",
                  "method.hp.weight_decay=1e-3", "method.hp.schedule=none", "measure.emissions=false")
    ours = config.build_method(job, runner.load_data(job))  # digits only to build it; trained on BioTorch's batches
    with torch.no_grad():
        for layer, theirs in zip(ours.layers, biotorch_layers):
            layer.weight.copy_(theirs.weight)
            layer.bias.copy_(theirs.bias)
        for b, theirs in zip(ours.feedback, biotorch_layers[1:]):  # B of layer i+1 carries block i's signal
            b.copy_(theirs.weight_backward)
    ours.start_phase(None, None, None, 10**9)
    return ours


def max_weight_gap(ours, biotorch_layers):
    return max((a.weight - b.weight).abs().max().item() for a, b in zip(ours.layers, biotorch_layers))


def main(rate, seed, epochs):
    net, layers = biotorch_network(seed)
    ours = our_network(rate, layers)
    optimizer = torch.optim.SGD(net.parameters(), lr=rate, momentum=0.9, weight_decay=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    dataset = FashionMNIST(32, dataset_path=os.environ.get("BPFREE_DATA", "data"))  # the folder prepare.py filled
    test_x, test_y = map(torch.cat, zip(*dataset.create_test_dataloader(1000)))
    for epoch in range(1, epochs + 1):
        sums, n = [0.0, 0.0], 0
        for step, (x, y) in enumerate(dataset.create_train_dataloader(64), start=1):
            net.train()
            loss = loss_fn(net(x, y, loss_fn), y)  # BioTorch's DFA needs the targets in its forward
            net.zero_grad()
            loss.backward()
            optimizer.step()
            sums[0] += loss.item()
            sums[1] += ours.train_step(x, y, None).item()
            n += 1
            if epoch == 1 and step == 1:
                print(f"after one step: largest weight difference {max_weight_gap(ours, layers):.1e}", flush=True)
            if step % 300 == 0:
                print(f"epoch {epoch} step {step}: mean loss BioTorch {sums[0] / n:.3f}, ours {sums[1] / n:.3f}", flush=True)
        with torch.no_grad():
            net.eval()
            acc_theirs = (net(test_x).argmax(1) == test_y).float().mean().item()
            acc_ours = (ours.predict(test_x).argmax(1) == test_y).float().mean().item()
        print(f"epoch {epoch}: loss BioTorch {sums[0] / n:.3f}, ours {sums[1] / n:.3f}; "
              f"test accuracy BioTorch {100 * acc_theirs:.2f} %, ours {100 * acc_ours:.2f} %", flush=True)


if __name__ == "__main__":
    main(float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
