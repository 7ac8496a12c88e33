"""The typed settings of a job that are not the training loop's or the meters' own.

Each config section is a dataclass whose field metadata is its valid range (see validate.py):
the same class describes, checks and carries the values, so there is no second schema to keep in
step. `TrainConfig` (loop.py) and `MeasureConfig` (meters.py) follow the same rule beside the code
that uses them. This module owns: the dataset and method YAML keys, the tuning settings, and the
search space of a method (one `SearchParam` per tuned hyperparameter, parsed once here).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from benchmark.errors import UserError
from benchmark.validate import check_fields


@dataclass
class DatasetSettings:
    name: str = field(metadata={})
    val_size: int | None = field(default=None, metadata={"ge": 1})  # images: held out of the training set
    split_seed: int = field(default=0, metadata={"ge": 0})
    split: int | None = field(default=None, metadata={"ge": 0})  # graphs: which released node split
    augment: str = field(default="none", metadata={"choices": ("none", "crop_flip", "crop_flip_reflect")})
    resize: int | None = field(default=None, metadata={"ge": 1})  # images: resized to resize x resize once, at load
    # images: standard = per-channel mean and std of the training split; none = pixels in [0, 1]
    normalise: str = field(default="standard", metadata={"choices": ("standard", "none")})
    target_accuracy: float | None = field(default=None, metadata={"gt": 0, "le": 1})


@dataclass
class LearningCheck:
    """The run a method's learning test makes on digits (tests/test_methods.py) and what it must reach."""

    floor: float = field(default=0.80, metadata={"gt": 0, "le": 1})  # test accuracy, 0..1
    dataset: str = field(default="digits", metadata={})  # graph methods: cora
    overrides: list | None = field(default=None, metadata={})  # key=value settings of the default check
    epochs: int | None = field(default=None, metadata={"ge": 1})  # None: the root budget
    # Options and archs besides the defaults, each a learning check of its own:
    # {name, overrides: [key=value, ...], floor}. Read from the method's own YAML file only, so a
    # method composed from another (cafo_dfa from cafo_rand) does not inherit its variants.
    variants: list | None = field(default=None, metadata={})


@dataclass
class MethodSettings:
    """The keys of a configs/method/*.yaml besides `hp` (the method's Hyper) and `search_space`."""

    name: str = field(metadata={})
    native_arch: str = field(metadata={})  # the architecture it runs on when no arch= is given
    batch_size: int = field(default=128, metadata={"ge": 1})  # its paper's, where its YAML gives one
    # Small datasets: the batch shrinks so that an epoch has at least this many optimizer steps
    # (a method that needs many small steps, like FF, says so here instead of failing on digits).
    min_steps_per_epoch: int = field(default=1, metadata={"ge": 1})
    # One digits run at these defaults must reach `test.floor` (tests/test_methods.py); a method
    # that cannot reach the usual 0.80 says why in its docstring.
    test: dict = field(default_factory=dict, metadata={})
    hp: dict = field(default_factory=dict, metadata={})
    search_space: dict = field(default_factory=dict, metadata={})


@dataclass
class TuningConfig:
    n_trials: int = field(metadata={"ge": 1})  # trials per cell, the same for every method
    max_epochs: int = field(metadata={"ge": 1})
    n_seeds: int = field(metadata={"ge": 1})  # final re-runs of the best setting, distinct seeds
    sampler: str = field(metadata={"choices": ("tpe", "qmc", "random")})
    pruner: str = field(metadata={"choices": ("median", "hyperband", "none")})
    enqueue_defaults: bool = field(metadata={})
    n_startup_trials: int = field(metadata={"ge": 0})
    n_warmup_steps: int = field(metadata={"ge": 0})
    timeout_s: float | None = field(metadata={"gt": 0})
    energy_cap_j: float | None = field(metadata={"gt": 0})
    storage: str | None = field(metadata={})


@dataclass
class SearchParam:
    """One tuned hyperparameter: a float or int range (optionally log-scaled) or a list of choices."""

    type: str = field(metadata={"choices": ("float", "int", "categorical")})
    low: float | None = field(default=None, metadata={})
    high: float | None = field(default=None, metadata={})
    log: bool = field(default=False, metadata={})
    choices: list | None = field(default=None, metadata={"min_items": 1})

    def contains(self, value) -> bool:
        """Whether the sampler could propose `value` (a weight decay of 0 on a log scale cannot)."""
        if self.type == "categorical":
            return value in self.choices
        return self.low <= value <= self.high and not (self.log and value <= 0)


def check_search_space(space: dict, hyper: type, method: str) -> dict[str, SearchParam]:
    """A method's `search_space` as SearchParams, every name a field of its Hyper (one-line errors)."""
    hp_names = {f.name for f in fields(hyper)}
    out = {}
    for name, spec in space.items():
        where = f"method.search_space.{name}"
        if name not in hp_names:
            raise UserError(f"{where} is not a hyperparameter of '{method}'", f"use one of: {', '.join(sorted(hp_names))}")
        if not isinstance(spec, dict):
            raise UserError(f"{where}={spec!r} is not a search-space entry", "write {type: float, low: a, high: b}")
        param = check_fields(where, SearchParam, spec, f"configs/method/{method}.yaml")
        if param.type == "categorical":
            if not param.choices:
                raise UserError(f"{where} has no choices", "give choices: [a, b, ...]")
        elif param.low is None or param.high is None or not param.low < param.high:
            raise UserError(f"{where} needs numbers low < high", "fix low and high")
        elif param.log and param.low <= 0:
            raise UserError(f"{where} is log-scaled but low={param.low} <= 0", "give a positive low")
        out[name] = param
    return out
