"""Composing and checking a job, once, before anything trains.

Owns the `Job`: one composed config with its parts checked and typed (method class and
hyperparameters, training budget, measurement, tuning settings and search space, device).
`preflight(argv)` expands the command line (and an experiment's own sweep) into every job it
would launch, composes each with Hydra's compose API and checks it: method, architecture and
dataset exist and fit together, every setting has the right type and range (the ranges are the
metadata of the settings' dataclasses), the dataset is on disk (or may be downloaded), the results
directory is writable, a tuning storage is reachable. The first problem is raised as a one-line
UserError; nothing has trained yet. `build_method(job, data)` is the one place a method is built.

Imports run one way: command line -> tuning -> runner -> config -> spec (pyproject's contracts).
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from benchmark import data as data_mod
from benchmark import spec
from benchmark.diagnostics import DiagnosticsConfig
from benchmark.errors import UserError
from benchmark.loop import TrainConfig
from benchmark.meters import MeasureConfig
from benchmark.settings import DatasetSettings, LearningCheck, MethodSettings, SearchParam, TuningConfig, check_search_space
from benchmark.validate import check_fields

CONFIG_DIR = Path(os.environ.get("BPFREE_CONFIGS", Path(__file__).resolve().parent.parent / "configs"))

# `${repeat:VALUE,N}` in a config: a list of N copies of VALUE (configs/arch/mlp_depth.yaml builds its
# widths from a depth and a width, so an experiment can sweep the depth alone).
if not OmegaConf.has_resolver("repeat"):
    OmegaConf.register_new_resolver("repeat", lambda value, n: [value] * int(n))

TOP_LEVEL = {
    "method", "arch", "dataset", "mode", "experiment_name", "seed", "device", "results_dir", "data", "train",
    "measure", "tuning", "skip_unsupported", "resume", "experiment", "diagnostics",
}


@dataclass(frozen=True)
class BatchRule:
    """Where a run's batch size comes from when train.batch_size is not set: the method's own,
    capped on small datasets so that an epoch still has `min_steps` optimizer steps."""

    size: int
    min_steps: int

    def for_dataset(self, n_train: int) -> int:
        return max(1, min(self.size, n_train // self.min_steps))


@dataclass
class Job:
    """A composed config, checked, with its parts as typed objects. `cfg` stays for what is
    recorded as it was composed (names, paths, the resolved config)."""

    cfg: DictConfig
    method_cls: type
    hp: object
    train: TrainConfig
    measure: MeasureConfig
    device: torch.device
    settings: MethodSettings
    dataset: DatasetSettings
    search_space: dict[str, SearchParam] = field(default_factory=dict)
    tuning: TuningConfig | None = None  # mode=tune only
    supported: bool = True
    batch_rule: BatchRule | None = None  # set when train.batch_size is None (the method's own)
    overrides: tuple[str, ...] = ()  # the command-line overrides it was composed from (preflight)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    unsupported_because: str = ""  # set when supported is False: the skip message says it


def build_method(job: Job, data, hp=None):
    """The job's method, built for `data` (input shape, classes) with `hp` (default: the job's).
    On a graph dataset the method also gets the graph (only graph archs' methods take one)."""
    on_graph = {} if data.graph is None else {"graph": data.graph}
    return job.method_cls(to_dict(job.cfg.arch), data.input_shape, data.num_classes, job.hp if hp is None else hp,
                          job.device, **on_graph)


def to_dict(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"device={spec!r} is not a device", "use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={spec} but CUDA is not available here", "use device=auto or device=cpu")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"device={spec} is not supported", "use auto, cpu, cuda or cuda:N")
    return device


def check(cfg: DictConfig) -> Job:
    """Check one composed config; raise a one-line UserError on the first problem."""
    unknown = sorted(set(cfg.keys()) - TOP_LEVEL)
    if unknown:
        raise UserError(f"'{unknown[0]}' is not a known setting", "see configs/config.yaml for the settings")
    seed = cfg.seed
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise UserError(f"seed={seed!r} must be a non-negative integer", "give e.g. seed=0")
    if cfg.mode not in ("run", "tune"):
        raise UserError(f"mode={cfg.mode!r} is not a mode", "use mode=run or mode=tune")
    method_cls = spec.get(cfg.method.name)
    method_yaml = f"configs/method/{cfg.method.name}.yaml"
    settings = check_fields("method", MethodSettings, to_dict(cfg.method), method_yaml)
    check_fields("method.test", LearningCheck, settings.test, method_yaml)
    hp = spec.check_hyperparameters(method_cls.Hyper, settings.hp, cfg.method.name)
    search_space = check_search_space(settings.search_space, method_cls.Hyper, cfg.method.name)
    resolve_native_arch(cfg)
    arch = to_dict(cfg.arch)
    from benchmark import archs

    archs.validate(arch)
    unsupported = ""  # why a grid cell is skipped (skip_unsupported); a single run raises instead
    try:
        method_cls.check_arch(arch)
    except UserError:
        if not cfg.skip_unsupported:
            raise
        unsupported = f"{cfg.method.name} does not run on {arch['kind']} architectures"
    apply_epoch_cap(cfg)
    train = check_fields("train", TrainConfig, to_dict(cfg.train), "configs/config.yaml")
    measure = check_fields("measure", MeasureConfig, to_dict(cfg.measure), "configs/config.yaml")
    diagnostics = check_fields("diagnostics", DiagnosticsConfig, to_dict(cfg.diagnostics), "configs/config.yaml")
    dataset = check_fields("dataset", DatasetSettings, to_dict(cfg.dataset), "configs/dataset/")
    try:
        check_data_kind(dataset, arch, method_cls)
    except UserError as mismatch:  # e.g. a graph-only method's native arch in an image grid
        if not cfg.skip_unsupported:
            raise
        unsupported = unsupported or mismatch.args[0]
    check_workload(dataset, arch, diagnostics)
    data_mod.check_available(dataset.name, cfg.data.root, bool(cfg.data.download), dataset.split)
    device = resolve_device(str(cfg.device))
    check_speed_options(train, method_cls, device)
    from benchmark.meters import check_energy_request

    check_energy_request(measure, device)
    batch_rule = None if train.batch_size is not None else BatchRule(settings.batch_size, settings.min_steps_per_epoch)
    check_writable(Path(cfg.results_dir) / cfg.experiment_name)
    from benchmark import results

    results.read_records(results.runs_file(cfg.results_dir, cfg.experiment_name), strict=True)  # corrupt line: stop now
    tuning = None
    if cfg.mode == "tune":
        from benchmark import storage

        tuning = check_fields("tuning", TuningConfig, to_dict(cfg.tuning), "configs/config.yaml")
        storage.check_reachable(storage.storage_spec(cfg))
    return Job(cfg, method_cls, hp, train, measure, device, settings, dataset, search_space, tuning, not unsupported,
               batch_rule, diagnostics=diagnostics, unsupported_because=unsupported)


def apply_epoch_cap(cfg: DictConfig) -> None:
    """`train.epoch_cap=N`: lower `train.epochs` to N where it is larger. A paper file sets its
    paper's epochs and wins over the experiment that sweeps it; the cap, which no paper file sets,
    survives composition, so an experiment can cut every cell to the budget the machine holds
    (repro_cafo_cifar10). The config, and so every record, then holds the epochs the run had."""
    cap = cfg.train.get("epoch_cap")
    if cap is None:
        return
    if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
        raise UserError(f"train.epoch_cap={cap!r} must be a positive integer or null", "give e.g. train.epoch_cap=15")
    if isinstance(cfg.train.epochs, int) and cfg.train.epochs > cap:
        cfg.train.epochs = cap


def check_data_kind(dataset: DatasetSettings, arch: dict, method_cls) -> None:
    """Graphs and images do not mix: a graph dataset needs a graph arch and the other way round.
    Where the method itself trains only the other kind of network, the fix is another method or
    dataset, not another arch, and the error says so."""
    from benchmark import archs

    def trains_graphs(cls) -> bool:
        return any(kind in archs.GRAPH_KINDS for kind in cls.supported_archs)

    on_graph, graph_arch = data_mod.is_graph(dataset.name), arch["kind"] in archs.GRAPH_KINDS
    arch_name = arch.get("name", arch["kind"])
    trains_images = any(kind not in archs.GRAPH_KINDS for kind in method_cls.supported_archs)
    if on_graph and not graph_arch:
        if not trains_graphs(method_cls):
            graph_methods = [n for n in spec.names() if trains_graphs(spec.get(n))]
            raise UserError(f"dataset '{dataset.name}' is a graph (node classification) but arch '{arch_name}' is an "
                            f"image network, and method '{method_cls.name}' trains image networks only",
                            f"use an image dataset, or a graph method: {', '.join(graph_methods)}")
        raise UserError(f"dataset '{dataset.name}' is a graph (node classification) but arch "
                        f"'{arch_name}' is an image network", "use arch=gcn or arch=sage")
    if graph_arch and not on_graph:
        if not trains_images:
            raise UserError(f"arch '{arch_name}' is a graph network but dataset '{dataset.name}' is images, and "
                            f"method '{method_cls.name}' trains graph networks only",
                            "use dataset=cora, citeseer or cora_ml, or an image method")
        raise UserError(f"arch '{arch_name}' is a graph network but dataset "
                        f"'{dataset.name}' is images", "use dataset=cora, citeseer or cora_ml")


def check_workload(dataset: DatasetSettings, arch: dict, diagnostics: DiagnosticsConfig) -> None:
    """What a dataset needs of the rest of the config (after check_data_kind)."""
    on_graph = data_mod.is_graph(dataset.name)
    if not on_graph and dataset.val_size is None:
        raise UserError(f"dataset.val_size is missing for '{dataset.name}'", f"add it to configs/dataset/{dataset.name}.yaml")
    if not on_graph and dataset.name in data_mod.IMAGE_SIDES:
        from benchmark import archs

        archs.check_image_size(arch, dataset.resize or data_mod.IMAGE_SIDES[dataset.name])
    if on_graph and dataset.resize is not None:
        raise UserError(f"dataset.resize={dataset.resize} applies to images, and '{dataset.name}' is a graph",
                        "leave dataset.resize unset")
    if on_graph and dataset.normalise != "standard":
        raise UserError(f"dataset.normalise={dataset.normalise} applies to images, and '{dataset.name}' is a graph "
                        "(its node features are row-normalised)", "leave dataset.normalise unset")
    if on_graph and diagnostics.enabled:
        raise UserError("diagnostics (alignment, probes, attacks) are for image datasets only",
                        "set diagnostics.enabled=false for graph runs")


def resolve_native_arch(cfg: DictConfig) -> None:
    """`arch=native` (the root default): put the method's own architecture, `native_arch` in its
    YAML, in place, so that a method named without an arch runs on the network its paper used.
    Grids keep naming archs explicitly."""
    if cfg.arch.get("kind") != "native":
        return
    from omegaconf import open_dict

    name = cfg.method.get("native_arch")
    if not name:
        raise UserError(f"method '{cfg.method.name}' declares no native_arch",
                        f"give arch=<name> or add native_arch to configs/method/{cfg.method.name}.yaml")
    with open_dict(cfg):
        cfg.arch = compose([f"+arch={name}"], config_name=None).arch  # the arch group alone, not a second full config


def check_speed_options(train: TrainConfig, method_cls, device: torch.device) -> None:
    if train.compile and not method_cls.compilable:
        raise UserError(f"train.compile=true: method '{method_cls.name}' cannot be compiled ({method_cls.compile_note})",
                        "set train.compile=false for this method")
    if train.autocast == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"train.autocast=bf16: {torch.cuda.get_device_name(device)} has no bfloat16 support",
                        "set train.autocast=none")
    if train.compile and train.checkpoint_minutes > 0:
        raise UserError("train.compile=true with train.checkpoint_minutes > 0: compiled modules cannot be saved whole",
                        "set train.compile=false or train.checkpoint_minutes=0")


def check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise UserError(
            f"results directory {folder} is not writable ({err.strerror or err})",
            "set results_dir= to a writable folder or fix its permissions",
        ) from None


# ------------------------------------------------------------------------------------------------
# Expanding a command line into the jobs it launches, with Hydra's own parser.


def compose(overrides: list[str], with_hydra: bool = False, config_name: str | None = "config") -> DictConfig:
    """The config `python -m benchmark <overrides>` composes (Hydra's compose API), unchecked.
    config_name=None composes only the groups the overrides name (`+arch=mlp`: one YAML group)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    from hydra.core.global_hydra import GlobalHydra

    try:
        if GlobalHydra.instance().is_initialized():  # inside the Hydra app: its config dir is ours
            return hydra_compose(config_name, overrides=overrides, return_hydra_config=with_hydra)
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return hydra_compose(config_name, overrides=overrides, return_hydra_config=with_hydra)
    except HydraException as err:
        raise _one_line(err) from None
    except Exception as err:  # OmegaConf errors (a bad interpolation, a wrong type in a merge)
        raise UserError(f"config error: {str(err).splitlines()[0]}", "check the override's key and value") from None


def group_options(group: str) -> list[str]:
    """The options of a config group (configs/<group>/*.yaml), by name."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def _one_line(err: Exception) -> UserError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    missing = re.search(r"Could not find '(\w+)/([^']*)'", first)
    if missing and (CONFIG_DIR / missing.group(1)).is_dir():  # any config group: method, paper, ...
        group, name = missing.groups()
        return UserError(f"unknown {group} '{name}'", f"choose one of: {', '.join(group_options(group))}")
    if "Could not override 'method.hp." in first:
        # A method's own setting (DFA's feedback, FA's zero_init) exists only once that method is
        # composed; where an experiment's sweep picks the method (paper=...), force it with ++.
        return UserError(first.rstrip("."), "check the key against the method's YAML (configs/method/), name the method "
                         "(method=<name>), or write ++key=value where an experiment's sweep picks the method")
    if "Could not override" in first or "not in struct" in first:
        return UserError(first.rstrip("."), "check the key's spelling (configs/config.yaml lists the settings) or add it with +key=value")
    return UserError(first.rstrip("."), "check the command-line overrides")


def expand(argv: list[str]) -> list[list[str]]:
    """The override lists of every job `argv` launches (one, unless -m or an experiment sweeps)."""
    return expand_grid(argv)[0]


def expand_grid(argv: list[str]) -> tuple[list[list[str]], bool]:
    """`expand`, and whether `argv` is a multirun (one that Hydra's launcher runs)."""
    grid, multirun, _ = _expand(argv)
    return grid, multirun


def _expand(argv: list[str]) -> tuple[list[list[str]], bool, DictConfig | None]:
    """`expand_grid`, and, when nothing sweeps, the one job's config as composed here (with
    Hydra's own node; None for a sweep, whose jobs are composed one by one).
    Sweeps (the command line's and an experiment's `hydra.sweeper.params`) are read with Hydra's
    own override parser, so `a,b`, `range(...)` and `glob(*)` mean what they mean to Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    multirun = any(a in ("-m", "--multirun") for a in argv)
    args = [a for a in argv if not a.startswith("-")]
    try:
        parsed = parser.parse_overrides(args)
    except Exception as err:
        raise _one_line(err) from None
    base = [o.input_line for o in parsed if not o.is_sweep_override()]
    sweeps = [o for o in parsed if o.is_sweep_override()]
    for o in sweeps:  # Hydra's sweeper reads its params from the config, not as a command-line sweep
        if o.get_key_element().startswith("hydra.sweeper.params."):
            axis = o.input_line.replace("hydra.sweeper.params.", "", 1)
            raise UserError(f"'{o.input_line}' sweeps a sweeper setting, not the grid's axis",
                            f"give the axis itself, '{axis}' (with -m): it replaces the experiment's values")
    full = compose(base, with_hydra=True)
    if full.hydra.mode is not None and str(full.hydra.mode).endswith("MULTIRUN"):
        multirun = True  # an experiment that sweeps is a multirun without -m, as in Hydra
    if sweeps and not multirun:
        raise UserError(f"'{sweeps[0].input_line}' is a sweep but -m was not given", "add -m (multirun)")
    axes = []
    if multirun:
        given = {o.get_key_element() for o in parsed}
        for key, values in (full.hydra.sweeper.get("params") or {}).items():
            if key not in given:
                try:
                    [experiment_sweep] = parser.parse_overrides([f"{key}={values}"])
                except Exception as err:
                    raise _one_line(err) from None
                sweeps.append(experiment_sweep)
        for o in sweeps:
            axes.append([f"{o.get_key_element()}={v}" for v in sweep_values(o)])
    if axes:
        return [base + list(combo) for combo in itertools.product(*axes)], multirun, None
    return [base], multirun, full


def sweep_values(override) -> list[str]:
    """The values one override sweeps over; `glob(...)` is matched against the config group's files."""
    from hydra.core.override_parser.types import Glob

    value = override.value()
    if isinstance(value, Glob):
        return value.filter(group_options(override.get_key_element()))
    if override.is_sweep_override():
        return list(override.sweep_string_iterator())
    return [override.get_value_element_as_str()]


def preflight(argv: list[str]) -> list[Job]:
    """Compose and check every job of `argv`. Raises UserError before anything trains."""
    return plan(argv)[0]


def plan(argv: list[str]) -> tuple[list[Job], bool]:
    """`preflight`, and whether `argv` is a multirun (else its one job runs without Hydra's app)."""
    grid, multirun, full = _expand(argv)
    if full is not None:
        # Nothing sweeps: the config `_expand` composed is the job's, less Hydra's own node, so a
        # single run composes once (issue 18: start-up).
        from omegaconf import open_dict

        with open_dict(full):
            del full["hydra"]
        configs = [full]
    else:
        configs = [compose(overrides) for overrides in grid]
    jobs = [dataclasses.replace(check(cfg), overrides=tuple(overrides)) for cfg, overrides in zip(configs, grid)]
    if not any(job.supported for job in jobs):
        raise UserError("no job of this grid can run: every method x arch pair is unsupported", "fix the grid's arch list")
    return jobs, multirun
