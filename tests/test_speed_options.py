"""The train.* speed options (compile, bf16 autocast, channels_last) do what they say, and the
activation-memory meter sees a block-local method hold less for backward than BP."""
from __future__ import annotations

import dataclasses

import torch

from benchmark import config, loop, runner
from benchmark.meters import MeasureConfig, Meters


def build(job_factory, *overrides):
    job = job_factory("dataset=digits", *overrides)
    data = runner.load_data(job)
    loop.seed_everything(0)
    method = config.build_method(job, data)
    return job, data, method


def one_epoch(job, data, method, **options):
    cfg = loop.TrainConfig(**{**vars(runner.train_settings(job, data)), "epochs": 1, "patience": 0, **options})
    meters = Meters(MeasureConfig(energy="none", emissions=False), job.device)
    out = loop.train(method, data, cfg, meters, seed=0)
    return out, meters


def test_bf16_autocast_runs_the_blocks_in_bfloat16(job_factory):
    job, data, method = build(job_factory, "method=bp", "arch=cnn")
    # A few images are enough to see the dtypes: bf16 convolutions are slow on some CPUs (a whole
    # digits epoch took two minutes of CI time here).
    data = dataclasses.replace(data, train_x=data.train_x[:128], train_y=data.train_y[:128], val_x=data.val_x[:64],
                               val_y=data.val_y[:64], test_x=data.test_x[:64], test_y=data.test_y[:64])
    seen = []
    method.modules["net"].blocks[0][0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    out, _ = one_epoch(job, data, method, autocast="bf16")
    assert out["status"] == "completed"
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in method.modules.parameters())  # weights stay fp32


def test_channels_last_converts_weights_and_images_not_the_cached_splits(job_factory):
    job, data, method = build(job_factory, "method=local", "arch=cnn")
    seen = []
    conv = method.modules["stages"][0][0][0]
    conv.register_forward_hook(lambda m, i, o: seen.append(i[0].is_contiguous(memory_format=torch.channels_last)))
    out, _ = one_epoch(job, data, method, channels_last=True)
    assert out["status"] == "completed"
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert seen and all(seen)
    assert data.train_x.is_contiguous()  # the shared, cached tensors were not changed in place


def test_compile_wraps_every_block_and_head_in_place():
    blocks = torch.nn.ModuleDict({"blocks": torch.nn.ModuleList([torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)]),
                                  "head": torch.nn.Linear(4, 2)})
    before = dict(blocks.state_dict())
    assert loop.compile_modules(blocks) == 3
    assert all(m._compiled_call_impl is not None for m in [*blocks["blocks"], blocks["head"]])
    assert blocks.state_dict().keys() == before.keys()  # names unchanged: restore and audit still work


def test_activation_memory_of_local_learning_is_below_bp(job_factory):
    figures = {}
    for name in ("bp", "local"):
        job, data, method = build(job_factory, f"method={name}", "arch=cnn")
        _, meters = one_epoch(job, data, method)
        figures[name] = meters.summary(len(data.train_y), [])["activation_memory"]
    assert figures["bp"]["unit"] == "B" and "saved-tensor" in figures["bp"]["source"]
    assert 0 < figures["local"]["value"] < 0.6 * figures["bp"]["value"]


def test_activation_memory_is_zero_without_a_backward_pass(job_factory):
    job, data, method = build(job_factory, "method=pepita", "arch=mlp_1x1024")
    _, meters = one_epoch(job, data, method)
    assert meters.summary(len(data.train_y), [])["activation_memory"]["value"] == 0
