"""A sweep spec (YAML) → the inputs it loads and the grid of cells it runs.

    experiment: simulate          # or fgd-inflation, hetero, continual, rap
    traces:
      - name: small               # optional; default: the file's or generator's name
        generate: {jobs: 500, rate: 4, seed: 1}
      - path: traces/*.csv        # a file or a glob, relative to the spec
        format: canonical
    cluster: {gpus: 64}           # or {file: nodes.csv}, {name: sia-64, scale: 2},
                                  # {nodes: 100, models: [A100, V100]}
    policies:
      - fifo
      - name: fgd
        options: {delta_cache_shapes: [0, 256]}   # a list is a grid axis
    seeds: 0-4                    # or [0, 1, 2], or 7
    settings: {restart_cost_s: 30}
    metrics: [avg_jct_s, p99_jct_s]               # optional: table columns to keep

Every mistake is reported with the field it is in (`policies[1].options`), before any
cell runs.
"""

from __future__ import annotations

import glob
import hashlib
import importlib
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from policies import NodeSpec
from simulator.clusters import named_cluster
from simulator.sweep.cells import Cell, canonical_json, make_cell

EXPERIMENTS = {
    "simulate": "simulator.sweep.simulate",
    "fgd-inflation": "simulator.experiments.fgd_inflation",
    "hetero": "simulator.experiments.hetero_sweep",
    "continual": "simulator.experiments.continual",
    "rap": "simulator.experiments.rap_cluster",
}
"""Experiment name → module whose `SWEEP` (a `SweepExperiment`) runs it in a sweep."""
TOP_LEVEL = ("experiment", "traces", "cluster", "policies", "seeds", "settings", "metrics")


class SpecError(ValueError):
    """A spec mistake, named by its field."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"sweep spec: {where}: {message}")


@dataclass(frozen=True)
class TraceSource:
    """A trace file (`path`, `format`) or generator settings (`generate`)."""

    name: str
    path: Path | None = None
    format: str = "canonical"
    generate: Mapping[str, Any] = field(default_factory=dict)
    base: Path = Path()
    """The spec's folder, which relative paths in `generate` settings are read from."""

    def resolve(self, path: str | Path) -> Path:
        """`path` as written in the spec: absolute, or relative to the spec's folder."""
        return Path(path) if Path(path).is_absolute() else self.base / path

    def digest(self) -> str:
        if self.path is None:
            return "generate:" + canonical_json(dict(self.generate))
        return f"{self.format}:{file_digest(self.path)}"


@dataclass(frozen=True)
class SweepExperiment:
    """How one experiment reads its inputs and runs a cell."""

    task: str
    """`module:function` run per cell."""
    settings: Mapping[str, Any]
    """The `settings:` keys it takes, with their defaults."""
    metrics: tuple[str, ...]
    load_trace: Callable[[TraceSource], Any]
    load_cluster: Callable[[Mapping[str, Any], Path], tuple[str, Any]]
    """Cluster entry (and the spec's folder) → (label, nodes)."""
    policy_params: Callable[[str, dict[str, Any]], dict[str, Any]]
    """Policy name and options → the cell's policy parameters; raises on a bad one."""
    digest_trace: Callable[[TraceSource], str] = TraceSource.digest
    """What a trace's cells are keyed by: by default its file's bytes or its generator
    settings; an experiment whose generator reads files adds their bytes."""


@dataclass
class SweepPlan:
    experiment: str
    cells: list[Cell]
    inputs: dict[str, Any]
    metrics: tuple[str, ...] | None
    """Metric columns the spec keeps (None: all)."""


def load_spec(path: str | Path) -> tuple[SweepPlan, str]:
    """The plan of the spec file at `path`, and the spec's text."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise SpecError(str(path), f"cannot read it ({err.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpecError(str(path), f"not YAML: {err}") from None
    if not isinstance(data, Mapping):
        raise SpecError(str(path), "expected a mapping of experiment, traces, cluster, ...")
    return plan(data, path.parent), text


def plan(data: Mapping[str, Any], base: Path) -> SweepPlan:
    unknown = sorted(set(data) - set(TOP_LEVEL))
    if unknown:
        raise SpecError(unknown[0], f"unknown key (known: {', '.join(TOP_LEVEL)})")
    name = str(data.get("experiment", "simulate"))
    experiment = experiment_named(name)
    traces = _traces(data.get("traces"), base)
    label, nodes = experiment.load_cluster(_mapping(data.get("cluster", {}), "cluster"), base)
    cluster_digest = _cluster_digest(data.get("cluster", {}), base)
    inputs: dict[str, Any] = {"cluster": nodes}
    digests = {"cluster": cluster_digest}
    for source in traces:
        inputs[f"trace:{source.name}"] = _load(experiment, source)
        digests[f"trace:{source.name}"] = experiment.digest_trace(source)
    policies = _policies(data.get("policies"), experiment)
    seeds = parse_seeds(data.get("seeds", 0))
    settings = _settings(data.get("settings", {}), experiment)
    metrics = _metrics(data.get("metrics"), experiment)
    cells: list[Cell] = []
    seen: set[str] = set()
    for source, policy, seed in itertools.product(traces, policies, seeds):
        params = {"trace": source.name, "cluster": label, **policy, "seed": seed, **settings}
        if source.path is not None:
            params["trace_format"] = source.format
        roles = {"trace": f"trace:{source.name}", "cluster": "cluster"}
        cell = make_cell(experiment.task, params, roles, digests)
        if cell.key not in seen:
            seen.add(cell.key)
            cells.append(cell)
    return SweepPlan(name, cells, inputs, metrics)


def experiment_named(name: str) -> SweepExperiment:
    if name not in EXPERIMENTS:
        raise SpecError("experiment", f"{name!r} is not one of {', '.join(EXPERIMENTS)}")
    experiment: SweepExperiment = importlib.import_module(EXPERIMENTS[name]).SWEEP
    return experiment


def parse_seeds(value: object) -> list[int]:
    """The spec's `seeds`: `42-51`, `42,43,50`, a list of integers, or one integer."""
    if isinstance(value, bool):
        raise SpecError("seeds", f"cannot read {value!r} as seeds")
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        if not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise SpecError("seeds", "a list of seeds must hold integers")
        return list(dict.fromkeys(value))
    try:
        return seed_list(str(value), "seeds")
    except ValueError as err:
        raise SpecError("seeds", str(err).partition(": ")[2]) from None


def seed_list(text: str, where: str) -> list[int]:
    """`42-51`, `42,43,50` or a mix; errors begin with `where`."""
    seeds: list[int] = []
    for part in text.split(","):
        first, sep, last = part.strip().partition("-")
        try:
            lo = int(first)
            hi = int(last) if sep else lo
        except ValueError:
            raise ValueError(f"{where}: cannot read {part!r} (use e.g. 42-51)") from None
        if hi < lo:
            raise ValueError(f"{where}: empty range {part!r}")
        seeds.extend(range(lo, hi + 1))
    return list(dict.fromkeys(seeds))


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def named_cluster_entry(
    entry: Mapping[str, Any], default: str, experiment: str
) -> tuple[str, list[NodeSpec]]:
    """A spec's `cluster: {name: NAME, scale: K}` (`simulator.clusters`; `default`
    when no name is given) as (label, nodes), for experiments that run named clusters."""
    unknown = sorted(set(entry) - {"name", "scale"})
    if unknown:
        raise SpecError(f"cluster.{unknown[0]}", f"the {experiment} experiment takes name, scale")
    name, scale = str(entry.get("name", default)), entry.get("scale", 1)
    try:
        nodes = named_cluster(name, int(scale))
    except (TypeError, ValueError) as err:
        raise SpecError("cluster", str(err)) from None
    return (name if scale == 1 else f"{name}x{scale}"), nodes


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SpecError(where, f"expected a mapping, got {value!r}")
    return value


def _traces(value: object, base: Path) -> list[TraceSource]:
    if not isinstance(value, list) or not value:
        raise SpecError("traces", "expected a list of traces (path or generate)")
    sources: list[TraceSource] = []
    for index, entry in enumerate(value):
        where = f"traces[{index}]"
        if isinstance(entry, str):
            entry = {"path": entry}
        entry = _mapping(entry, where)
        unknown = sorted(set(entry) - {"name", "path", "format", "generate"})
        if unknown:
            raise SpecError(f"{where}.{unknown[0]}", "unknown key (name, path, format, generate)")
        if ("path" in entry) == ("generate" in entry):
            raise SpecError(where, "give exactly one of path or generate")
        if "generate" in entry:
            settings = dict(_mapping(entry["generate"], f"{where}.generate"))
            name = str(entry.get("name", f"synthetic-{len(sources)}"))
            sources.append(TraceSource(name, generate=settings, base=base))
            continue
        paths = _expand(str(entry["path"]), base, f"{where}.path")
        if "name" in entry and len(paths) > 1:
            raise SpecError(f"{where}.name", "a glob matching several files cannot have one name")
        fmt = str(entry.get("format", "canonical"))
        for path in paths:
            sources.append(TraceSource(str(entry.get("name", path.stem)), path, fmt, base=base))
    names = [s.name for s in sources]
    for name in names:
        if names.count(name) > 1:
            raise SpecError("traces", f"two traces are named {name!r}; give them names")
    return sources


def _expand(pattern: str, base: Path, where: str) -> list[Path]:
    full = pattern if Path(pattern).is_absolute() else str(base / pattern)
    found = sorted(Path(p) for p in glob.glob(full) if Path(p).is_file())
    if not found:
        raise SpecError(where, f"no file matches {pattern!r}")
    return found


def _load(experiment: SweepExperiment, source: TraceSource) -> Any:
    try:
        return experiment.load_trace(source)
    except (TypeError, ValueError, OSError) as err:
        where = f"trace {source.name!r}" + (" generate" if source.path is None else "")
        raise SpecError(where, str(err)) from None


def _cluster_digest(value: Any, base: Path) -> str:
    entry = dict(value)
    if "file" in entry:
        path = Path(entry["file"]) if Path(entry["file"]).is_absolute() else base / entry["file"]
        entry["file"] = file_digest(path)
    return canonical_json(entry)


def _policies(value: object, experiment: SweepExperiment) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise SpecError("policies", "expected a list of policies (a name, or name and options)")
    expanded: list[dict[str, Any]] = []
    for index, entry in enumerate(value):
        where = f"policies[{index}]"
        if isinstance(entry, str):
            entry = {"name": entry}
        entry = _mapping(entry, where)
        unknown = sorted(set(entry) - {"name", "options"})
        if unknown or "name" not in entry:
            raise SpecError(where, "give name and, optionally, options")
        options = _mapping(entry.get("options", {}), f"{where}.options")
        axes = [v if isinstance(v, list) else [v] for v in options.values()]
        for combination in itertools.product(*axes):
            chosen = dict(zip(options, combination, strict=True))
            try:
                expanded.append(experiment.policy_params(str(entry["name"]), chosen))
            except (KeyError, TypeError, ValueError) as err:
                raise SpecError(where, str(err).strip("'\"")) from None
    return expanded


def _settings(value: object, experiment: SweepExperiment) -> dict[str, Any]:
    given = _mapping(value, "settings")
    unknown = sorted(set(given) - set(experiment.settings))
    if unknown:
        known = ", ".join(experiment.settings) or "none"
        raise SpecError(f"settings.{unknown[0]}", f"unknown setting (known: {known})")
    return {**experiment.settings, **given}


def _metrics(value: object, experiment: SweepExperiment) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SpecError("metrics", "expected a list of metric names")
    unknown = [m for m in value if m not in experiment.metrics]
    if unknown:
        raise SpecError(
            "metrics", f"unknown {unknown[0]!r} (known: {', '.join(experiment.metrics)})"
        )
    return tuple(value)
