"""Benchmark configuration: the pipelines to compare, the tasks, the budget.

A configuration is a small TOML or JSON file; ``benchmarks/default.toml`` is the
default and documents every key::

    tasks = ["gender", "age"]        # from models.labels.TASKS
    seed = 0                         # seed of a new split, of PCA and of the models
    predict_sample = 128             # test faces timed for predict throughput
    limit = 1000                     # optional: a stratified subset of the split

    [extractors]                     # name = feature blocks, EXTRACTOR[:SIZE[:COLOUR[:PCA]]]
    hog = ["hog:128:gray:150"]

    [models.svm]                     # name = model family, parameters and (optionally)
    model = "svm"                    # the extractors it is paired with (default: all)
    params = {C = 10}

    [cnn]                            # optional: CNN variants, one pipeline each
    architectures = ["default", "seed_baseline"]
    epochs = 12                      # the same budget for every architecture
    batch_size = 64
    size = 128
    color = "gray"

    [runs.stack]                     # optional: ``python -m pipelines.run`` commands,
    args = ["--model", "stack",      # one pipeline each, run in this order; the
            "--members", "{runs}/cnn"]   # benchmark adds --data, --split, --out, ...
    [runs.cnn]                       # ({runs}: the folder of the other runs' outputs)
    member = "cnn"                   # the arguments of a default stack member

    [quick]                          # what --quick changes: limit, epochs, size,
    limit = 300                      # batch_size, predict_sample, and model parameters
    epochs = 2
    [quick.models.svm]
    params = {C = 1}                 # merged into the model's params

Every model is paired with every extractor (pipeline ``<extractor>-<model>``),
every CNN architecture is one pipeline (``cnn-<architecture>``) trained once for all
the tasks it has a head for, and every run is one pipeline (its name) scored on the
tasks its command trains. A run may name the output of an earlier run as
``{runs}/NAME`` (a stack's members).
"""
from __future__ import annotations

import dataclasses
import json
import re
from importlib import resources
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from features.io import DEFAULT_SIZE
from models.cnn import ARCHITECTURES, resolve_tasks
from models.factory import MODELS
from models.labels import TASKS
from pipelines.feature_blocks import FeatureSpec
from pipelines.run import build_parser
from pipelines.stacking import DEFAULT_MEMBERS, STACK_TASKS

#: The configuration used without ``--config``.
DEFAULT_CONFIG = Path(str(resources.files("benchmarks") / "default.toml"))
_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")
_QUICK_KEYS = ("limit", "epochs", "size", "batch_size", "predict_sample", "models")
#: Where a run's command names the output folder of the benchmark's runs.
RUNS_PLACEHOLDER = "{runs}"
#: ``pipelines.run`` options the benchmark sets for every run.
_RUN_OPTIONS = ("--data", "--split", "--out", "--overwrite", "--cache-dir", "--no-cache",
                "--n-jobs", "--seed", "--scheduler", "--quiet")


@dataclass(frozen=True)
class ClassicalPipeline:
    """Feature blocks, PCA per block and a classical model, one model per task."""

    name: str
    extractor: str
    features: tuple[FeatureSpec, ...]
    model_name: str
    model: str
    params: dict[str, Any]
    tasks: tuple[str, ...]
    kind: str = field(default="classical", init=False)

    def describe(self) -> dict[str, Any]:
        """JSON-ready definition (part of the key that decides whether to rerun)."""
        return {"kind": self.kind, "extractor": self.extractor,
                "features": [str(spec) for spec in self.features], "model": self.model,
                "params": self.params, "tasks": list(self.tasks)}


@dataclass(frozen=True)
class CNNPipeline:
    """A CNN architecture trained once for all its tasks."""

    name: str
    architecture: str
    tasks: tuple[str, ...]
    epochs: int
    batch_size: int
    size: tuple[int, int]
    color: str
    kind: str = field(default="cnn", init=False)

    def describe(self) -> dict[str, Any]:
        """JSON-ready definition (part of the key that decides whether to rerun)."""
        return {"kind": self.kind, "architecture": self.architecture, "tasks": list(self.tasks),
                "epochs": self.epochs, "batch_size": self.batch_size,
                "size": list(self.size), "color": self.color}


@dataclass(frozen=True)
class RunPipeline:
    """A ``python -m pipelines.run`` command, scored on the tasks it trains.

    ``args`` leave out the options of :data:`_RUN_OPTIONS`, which the benchmark adds;
    ``epochs`` (``--quick``) is appended to a CNN's arguments.
    """

    name: str
    args: tuple[str, ...]
    tasks: tuple[str, ...]
    model: str
    epochs: int | None = None
    kind: str = field(default="run", init=False)

    def describe(self) -> dict[str, Any]:
        """JSON-ready definition (part of the key that decides whether to rerun)."""
        return {"kind": self.kind, "args": list(self.args), "tasks": list(self.tasks),
                "model": self.model, "epochs": self.epochs}

    def arguments(self, runs_dir: str | Path) -> list[str]:
        """The command's arguments, ``{runs}`` replaced by ``runs_dir``."""
        args = [arg.replace(RUNS_PLACEHOLDER, str(runs_dir)) for arg in self.args]
        return args + ([] if self.epochs is None else ["--epochs", str(self.epochs)])


def run_tasks(args: tuple[str, ...], where: str) -> tuple[tuple[str, ...], str]:
    """The tasks a ``pipelines.run`` command trains, and its model: ``stack``,
    ``cnn:<architecture>`` or the classical model's name.

    Raises
    ------
    ValueError
        If ``pipelines.run`` refuses the arguments, or they hold an option the
        benchmark sets (:data:`_RUN_OPTIONS`).
    """
    reserved = sorted({arg.split("=")[0] for arg in args} & set(_RUN_OPTIONS))
    if reserved:
        raise ValueError(f"{where}: {', '.join(reserved)} are set by the benchmark")
    try:
        parsed = build_parser().parse_args(list(args))
    except SystemExit:
        raise ValueError(f"{where}: python -m pipelines.run refuses {list(args)} "
                         f"(its message is above)") from None
    if parsed.model == "stack":
        return STACK_TASKS, "stack"
    if parsed.model == "cnn":
        try:
            heads = resolve_tasks(parsed.architecture,
                                  None if "all" in parsed.tasks else parsed.tasks)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        return heads, f"cnn:{parsed.architecture}"
    return (TASKS if "all" in parsed.tasks else tuple(dict.fromkeys(parsed.tasks)),
            parsed.model)


@dataclass(frozen=True)
class ModelEntry:
    """A classical model of the configuration."""

    model: str
    params: dict[str, Any]
    extractors: tuple[str, ...] | None = None


@dataclass(frozen=True)
class CNNSettings:
    """The ``[cnn]`` table: architectures and their shared training budget."""

    architectures: tuple[str, ...]
    epochs: int = 12
    batch_size: int = 64
    size: tuple[int, int] = DEFAULT_SIZE
    color: str = "gray"


@dataclass(frozen=True)
class BenchmarkConfig:
    """A parsed, checked configuration (see the module docstring)."""

    tasks: tuple[str, ...]
    extractors: dict[str, tuple[FeatureSpec, ...]]
    models: dict[str, ModelEntry]
    cnn: CNNSettings | None = None
    seed: int = 0
    predict_sample: int = 128
    limit: int | None = None
    quick: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    runs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    run_epochs: int | None = None

    def pipelines(self) -> list[ClassicalPipeline | CNNPipeline | RunPipeline]:
        """Every pipeline, grouped by extractor (its models in configuration order), then
        the CNNs, then the runs; one that trains none of the tasks is left out."""
        found: list[ClassicalPipeline | CNNPipeline | RunPipeline] = []
        for extractor, specs in self.extractors.items():
            for model_name, entry in self.models.items():
                if entry.extractors is None or extractor in entry.extractors:
                    found.append(ClassicalPipeline(f"{extractor}-{model_name}", extractor, specs,
                                                   model_name, entry.model, entry.params,
                                                   self.tasks))
        for architecture in self.cnn.architectures if self.cnn else ():
            tasks = tuple(t for t in self.tasks if t in ARCHITECTURES[architecture].tasks)
            if tasks:
                found.append(CNNPipeline(f"cnn-{architecture}", architecture, tasks,
                                         self.cnn.epochs, self.cnn.batch_size, self.cnn.size,
                                         self.cnn.color))
        for name, args in self.runs.items():
            trained, model = run_tasks(args, f"runs.{name}")
            tasks = tuple(task for task in self.tasks if task in trained)
            if tasks:
                found.append(RunPipeline(name, args, tasks, model,
                                         self.run_epochs if model.startswith("cnn:") else None))
        return found

    def for_quick(self) -> BenchmarkConfig:
        """The configuration with its ``[quick]`` overrides applied."""
        settings = dict(self.quick)
        models = dict(self.models)
        for name, override in settings.pop("models", {}).items():
            models[name] = dataclasses.replace(
                models[name], params={**models[name].params, **override.get("params", {})})
        return dataclasses.replace(self, models=models).with_overrides(**settings)

    def with_overrides(self, *, tasks: tuple[str, ...] | None = None, limit: int | None = None,
                       predict_sample: int | None = None, epochs: int | None = None,
                       size: int | None = None, batch_size: int | None = None
                       ) -> BenchmarkConfig:
        """A copy with some settings replaced (None keeps a setting)."""
        cnn = self.cnn
        if cnn is not None:
            cnn = dataclasses.replace(
                cnn, epochs=cnn.epochs if epochs is None else epochs,
                batch_size=cnn.batch_size if batch_size is None else batch_size,
                size=cnn.size if size is None else (size, size))
        updated = dataclasses.replace(
            self, cnn=cnn, tasks=self.tasks if tasks is None else tuple(tasks),
            run_epochs=self.run_epochs if epochs is None else epochs,
            limit=self.limit if limit is None else limit,
            predict_sample=self.predict_sample if predict_sample is None else predict_sample)
        _check(updated)
        return updated


def load_config(path: str | Path = DEFAULT_CONFIG) -> BenchmarkConfig:
    """Read and check a TOML (``.toml``) or JSON (``.json``) configuration.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        For a file that does not parse, an unknown key, or an invalid value (the
        message names the key).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark configuration not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        try:
            import tomllib
        except ImportError:      # Python 3.10
            raise ValueError(f"reading {path} needs Python 3.11 or newer (tomllib); "
                             f"write the configuration as JSON instead") from None
    try:
        if path.suffix == ".json":
            raw = json.loads(text)
        elif path.suffix == ".toml":
            raw = tomllib.loads(text)
        else:
            raise ValueError("expected a .toml or .json file")
    except ValueError as error:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise ValueError(f"cannot read benchmark configuration {path}: {error}") from error
    return parse_config(raw, source=str(path))


def parse_config(raw: Mapping[str, Any], source: str = "") -> BenchmarkConfig:
    """Build a :class:`BenchmarkConfig` from parsed TOML/JSON data (see :func:`load_config`)."""
    where = source or "configuration"
    _only_keys(raw, ("tasks", "seed", "predict_sample", "limit", "extractors", "models", "cnn",
                     "runs", "quick"), where)
    extractors = {}
    for name, blocks in _table(raw, "extractors", where).items():
        if isinstance(blocks, str):
            blocks = [blocks]
        try:
            extractors[name] = tuple(FeatureSpec.parse(text) for text in blocks)
        except (TypeError, AttributeError, ValueError) as error:
            raise ValueError(f"{where}: extractors.{name}: {error}") from None
    models = {}
    for name, entry in _table(raw, "models", where).items():
        _only_keys(entry, ("model", "params", "extractors"), f"{where}: models.{name}")
        pairs, params = entry.get("extractors"), entry.get("params", {})
        if not isinstance(params, dict) or not (pairs is None or isinstance(pairs, list)):
            raise ValueError(f"{where}: models.{name}: params must be a table and extractors "
                             f"a list of extractor names")
        models[name] = ModelEntry(entry.get("model", name), dict(params),
                                  None if pairs is None else tuple(pairs))
    cnn = None
    if "cnn" in raw:
        table = raw["cnn"]
        _only_keys(table, ("architectures", "epochs", "batch_size", "size", "color"),
                   f"{where}: cnn")
        settings = {key: table[key] for key in ("epochs", "batch_size", "color") if key in table}
        if "size" in table:
            size = table["size"]
            settings["size"] = (size, size) if isinstance(size, int) else tuple(size)
        cnn = CNNSettings(tuple(table.get("architectures", ARCHITECTURES)), **settings)
    quick = dict(raw.get("quick", {}))
    _only_keys(quick, _QUICK_KEYS, f"{where}: quick")
    for name, override in _table(quick, "models", f"{where}: quick").items():
        _only_keys(override, ("params",), f"{where}: quick.models.{name}")
        if name not in models or not isinstance(override.get("params", {}), dict):
            raise ValueError(f"{where}: quick.models.{name}: expected params (a table) of a "
                             f"model of [models]")
    config = BenchmarkConfig(tuple(raw.get("tasks", TASKS)), extractors, models, cnn,
                             raw.get("seed", 0), raw.get("predict_sample", 128),
                             raw.get("limit"), quick, source, _runs(raw, where))
    _check(config)
    return config


def _runs(raw: Mapping[str, Any], where: str) -> dict[str, tuple[str, ...]]:
    """The ``[runs]`` tables: name -> ``pipelines.run`` arguments, checked in order."""
    runs: dict[str, tuple[str, ...]] = {}
    for name, entry in _table(raw, "runs", where).items():
        here = f"{where}: runs.{name}"
        _only_keys(entry, ("args", "member"), here)
        if ("args" in entry) == ("member" in entry):
            raise ValueError(f"{here}: give either args (a list of arguments) or member "
                             f"(one of {sorted(DEFAULT_MEMBERS)})")
        if "member" in entry:
            if entry["member"] not in DEFAULT_MEMBERS:
                raise ValueError(f"{here}: member must be one of {sorted(DEFAULT_MEMBERS)}, "
                                 f"got {entry['member']!r}")
            args = DEFAULT_MEMBERS[entry["member"]]
        else:
            args = entry["args"]
            if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
                raise ValueError(f"{here}: args must be a list of strings")
        for arg in args:
            if RUNS_PLACEHOLDER in arg:
                earlier = arg.split(RUNS_PLACEHOLDER + "/", 1)[-1]
                if earlier not in runs:
                    raise ValueError(f"{here}: {arg!r} names no earlier run (runs before it: "
                                     f"{list(runs) or 'none'})")
        run_tasks(tuple(args), here)
        runs[name] = tuple(args)
    return runs


def _table(raw: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    table = raw.get(key, {})
    if not isinstance(table, dict):
        raise ValueError(f"{where}: {key} must be a table")
    for name in table:
        if not _NAME.match(name):
            raise ValueError(f"{where}: {key}.{name}: names may hold letters, digits and _.+-")
    return table


def _only_keys(table: Any, allowed: tuple[str, ...], where: str) -> None:
    if not isinstance(table, dict):
        raise ValueError(f"{where} must be a table")
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; expected {list(allowed)}")


def _positive(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where} must be a positive integer, got {value!r}")


def _check(config: BenchmarkConfig) -> None:
    where = config.source or "configuration"
    unknown = [task for task in config.tasks if task not in TASKS]
    if unknown or not config.tasks:
        raise ValueError(f"{where}: tasks must be a non-empty selection of {TASKS}, "
                         f"got {list(config.tasks)}")
    if isinstance(config.seed, bool) or not isinstance(config.seed, int):
        raise ValueError(f"{where}: seed must be an integer, got {config.seed!r}")
    _positive(config.predict_sample, f"{where}: predict_sample")
    if config.limit is not None:
        _positive(config.limit, f"{where}: limit")
    for name, entry in config.models.items():
        if entry.model not in MODELS:
            raise ValueError(f"{where}: models.{name}: unknown model {entry.model!r}; "
                             f"choose from {MODELS}")
        missing = sorted(set(entry.extractors or ()) - set(config.extractors))
        if missing:
            raise ValueError(f"{where}: models.{name}: no extractors named {missing}")
    if config.cnn is not None:
        unknown = [a for a in config.cnn.architectures if a not in ARCHITECTURES]
        if unknown:
            raise ValueError(f"{where}: cnn: unknown architectures {unknown}; "
                             f"choose from {sorted(ARCHITECTURES)}")
        for key in ("epochs", "batch_size"):
            _positive(getattr(config.cnn, key), f"{where}: cnn.{key}")
        if len(config.cnn.size) != 2:
            raise ValueError(f"{where}: cnn.size must be N or [H, W], got {config.cnn.size}")
        for value in config.cnn.size:
            _positive(value, f"{where}: cnn.size")
        if config.cnn.color not in ("gray", "rgb"):
            raise ValueError(f"{where}: cnn.color must be gray or rgb, got {config.cnn.color!r}")
    if not config.pipelines():
        raise ValueError(f"{where}: no pipeline to run (no extractor x model pair, no CNN "
                         f"with a head for {list(config.tasks)})")
