"""Continual-training traces: a streams file (one row per model stream), optionally with
ordinary batch jobs beside it, and a seeded generator.

Streams file (`STREAM_COLUMNS`, CSV):

| column | meaning |
|---|---|
| `id` | unique stream id |
| `start_s`, `window_s`, `windows` | first window opening, window length, window count |
| `deadline_s` | deadline of each window's retraining, from the window's opening |
| `cpu_milli`, `mem_mib`, `gpu_milli` | request ordinary policies see (a GPU or a fraction) |
| `max_gpus` | largest share an accuracy-aware policy may give (whole GPUs) |
| `allowed_models` | `|`-separated GPU models, empty for any |
| `restart_cost_s`, `priority` | as for jobs |
| `throughput` | `MODEL=speed;...` relative to the reference GPU (speed 1) |
| `scaling` | speed-up efficiency per doubling of whole GPUs |
| `ceiling`, `floor`, `initial_accuracy` | accuracy curve bounds; accuracy at `start_s` |
| `decay_per_h` | staleness decay rate λ (1/h) |
| `half_gain_gpu_s` | h: reference-GPU-seconds at which a full-quality config closes half the gap |
| `shift_prob`, `shift_mean`, `drift_seed` | abrupt drift at window openings |
| `configs` | `name=work_gpu_s:quality;...` retraining configurations |
| `default_config` | index into `configs` used by policies that do not choose |
| `trigger_below`, `trigger_drop` | optional drift trigger (empty or 0: off; both off: periodic) |
| `trigger_min_gap_s` | least seconds between a stream's triggers (default 600) |
| `inference_milli`, `inference_gamma` | optional inference demand (default 0) and its γ (0.5) |
| `min_gpus` | optional smallest share (whole GPUs, default 1); ordinary policies place it |
| `cron` | optional cron (5 fields, or 6 seconds first; UTC): windows at its firings |
| `epoch_s` | optional Unix time of the file's time 0, which `cron` fires by (default 0) |

The last eight columns are optional, so older streams files read as periodic streams
of one GPU at least, without inference. A `cron` stream's windows open at the firings
from `start_s` on, each lasting until the next, and its `window_s` is 0.

Batch jobs mixed in live in a canonical jobs file beside it: `NAME.batch.csv` for
`NAME.csv` (`batch_path`).

Over 500 lines because the streams file's columns, their reader and writer, the stream
generator and its command line share one set of fields and defaults.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from policies import JobSpec, TaskRequest
from policies.continual import (
    AccuracyCurve,
    DriftProfile,
    DriftTrigger,
    RetrainConfig,
    StreamSpec,
    has_whole_share,
)
from policies.windows import CronSchedule
from traces import canonical
from traces.csvio import Row, read_rows, write_rows
from traces.errors import TraceError
from traces.formats import FORMATS, load_jobs
from traces.synthetic import SyntheticSpec, generate_jobs

STREAM_COLUMNS = (
    "id",
    "start_s",
    "window_s",
    "windows",
    "deadline_s",
    "cpu_milli",
    "mem_mib",
    "gpu_milli",
    "max_gpus",
    "allowed_models",
    "restart_cost_s",
    "priority",
    "throughput",
    "scaling",
    "ceiling",
    "floor",
    "initial_accuracy",
    "decay_per_h",
    "half_gain_gpu_s",
    "shift_prob",
    "shift_mean",
    "drift_seed",
    "configs",
    "default_config",
    "trigger_below",
    "trigger_drop",
    "trigger_min_gap_s",
    "inference_milli",
    "inference_gamma",
    "min_gpus",
    "cron",
    "epoch_s",
)

SIA_SPEEDS: tuple[tuple[str, float], ...] = (("a100", 1.0), ("rtx2080ti", 0.33), ("t4", 0.145))
"""Per-sample training speed of a small CNN relative to an A100, from the Sia artifact's
cifar10 profiles at maximum batch (A100 4096/0.407 s, RTX 2080Ti 1024/0.310 s, T4
1024/0.702 s per step)."""

CONFIG_FAMILY: tuple[tuple[str, float, float], ...] = (
    ("cheap", 0.25, 0.8),
    ("medium", 1.0, 0.9),
    ("expensive", 4.0, 1.0),
)
"""(name, work as a multiple of the stream's h, quality): last layers on a data sample
for few epochs, up to all layers on all data for many epochs, as Ekya's configs span."""


@dataclass(frozen=True)
class ContinualSpec:
    """Parameters of the generated stream family (docs/continual.md lists the defaults)."""

    streams: int = 20
    windows: int = 144
    window_s: float = 600.0
    deadline_fraction: float = 1.0
    request_milli: int = 1000
    max_gpus: int = 4
    min_gpus: int = 1
    half_gain_median_s: float = 120.0
    half_gain_sigma: float = 0.5
    decay_median_per_h: float = 0.5
    decay_sigma: float = 0.5
    bursty_fraction: float = 0.5
    shift_prob: float = 0.2
    shift_mean: float = 0.1
    restart_cost_s: float = 10.0
    scaling: float = 0.9
    speeds: tuple[tuple[str, float], ...] = SIA_SPEEDS
    cpu_milli: int = 2000
    mem_mib: int = 8192
    trigger_drop: float = 0.0
    """> 0: every stream retrains on a drop of this much accuracy, not per window."""
    trigger_min_gap_s: float = 600.0
    inference_milli: int = 0
    inference_gamma: float = 0.5

    def validate(self) -> None:
        if self.streams < 1 or self.windows < 1 or self.window_s <= 0:
            raise ValueError("need at least one stream and window, and window_s > 0")
        if not 0 < self.deadline_fraction <= 1:
            raise ValueError("deadline fraction must be in (0, 1]")
        if not 0 < self.request_milli <= 1000 or not 1 <= self.min_gpus <= self.max_gpus:
            raise ValueError("request milli must be in (0, 1000] and 1 <= min_gpus <= max_gpus")
        if self.min_gpus > 1 and self.request_milli != 1000:
            raise ValueError("min_gpus above 1 needs a whole-GPU request (request milli 1000)")
        if not has_whole_share(self.min_gpus, self.max_gpus):
            raise ValueError(
                "min_gpus to max_gpus must include 1, 2, 4 or 8 GPUs "
                "(the shares thief, edf and fairshare give)"
            )


def generate_streams(spec: ContinualSpec, seed: int = 0) -> list[StreamSpec]:
    """`spec.streams` streams with aligned windows (as Ekya's cameras share windows)."""
    spec.validate()
    rng = np.random.default_rng(seed)
    n = spec.streams
    half_gain = rng.lognormal(math.log(spec.half_gain_median_s), spec.half_gain_sigma, n)
    decay = rng.lognormal(math.log(spec.decay_median_per_h), spec.decay_sigma, n)
    ceiling = rng.uniform(0.85, 0.95, n)
    depth = rng.uniform(0.3, 0.5, n)
    bursty = rng.random(n) < spec.bursty_fraction
    jitter = rng.uniform(0.8, 1.25, (n, len(spec.speeds)))
    drift_seeds = rng.integers(0, 2**31 - 1, n)
    task = TaskRequest(spec.cpu_milli, spec.mem_mib, 1, spec.request_milli)
    streams = []
    for i in range(n):
        h = round(float(half_gain[i]), 3)
        speeds = {
            model: round(min(1.0, base * float(jitter[i, k])) if base < 1.0 else 1.0, 4)
            for k, (model, base) in enumerate(spec.speeds)
        }
        drift = DriftProfile(spec.shift_prob, spec.shift_mean) if bursty[i] else DriftProfile()
        top = round(float(ceiling[i]), 4)
        streams.append(
            StreamSpec(
                id=f"stream-{i:04d}",
                start_s=0.0,
                window_s=spec.window_s,
                windows=spec.windows,
                deadline_s=spec.window_s * spec.deadline_fraction,
                task=task,
                throughput=speeds,
                curve=AccuracyCurve(top, round(top - float(depth[i]), 4), float(decay[i]), h),
                configs=tuple(
                    RetrainConfig(name, round(mult * h, 3), quality)
                    for name, mult, quality in CONFIG_FAMILY
                ),
                default_config=1,
                max_gpus=spec.max_gpus,
                min_gpus=spec.min_gpus,
                scaling=spec.scaling,
                restart_cost_s=spec.restart_cost_s,
                drift=drift,
                drift_seed=int(drift_seeds[i]),
                trigger=_trigger(spec),
                inference_milli=spec.inference_milli,
                inference_gamma=spec.inference_gamma,
            )
        )
    return streams


def _trigger(spec: ContinualSpec) -> DriftTrigger | None:
    if spec.trigger_drop <= 0:
        return None
    return DriftTrigger(drop=spec.trigger_drop, min_gap_s=spec.trigger_min_gap_s)


# -- the streams file -----------------------------------------------------------------


def stream_row(stream: StreamSpec) -> dict[str, object]:
    curve = stream.curve
    return {
        "id": stream.id,
        "start_s": stream.start_s,
        "window_s": stream.window_s,
        "windows": stream.windows,
        "deadline_s": stream.deadline_s,
        "cpu_milli": stream.task.cpu_milli,
        "mem_mib": stream.task.mem_mib,
        "gpu_milli": stream.task.gpu_milli,
        "max_gpus": stream.max_gpus,
        "min_gpus": stream.min_gpus,
        "allowed_models": "|".join(sorted(stream.allowed_models or ())),
        "restart_cost_s": stream.restart_cost_s,
        "priority": stream.priority,
        "throughput": _pairs(stream.throughput),
        "scaling": stream.scaling,
        "ceiling": curve.ceiling,
        "floor": curve.floor,
        "initial_accuracy": "" if stream.initial_accuracy is None else stream.initial_accuracy,
        "decay_per_h": curve.decay_per_h,
        "half_gain_gpu_s": curve.half_gain_gpu_s,
        "shift_prob": stream.drift.shift_prob,
        "shift_mean": stream.drift.shift_mean,
        "drift_seed": stream.drift_seed,
        "configs": ";".join(f"{c.name}={c.work_gpu_s!r}:{c.quality!r}" for c in stream.configs),
        "default_config": stream.default_config,
        **_trigger_fields(stream.trigger),
        "inference_milli": stream.inference_milli,
        "inference_gamma": stream.inference_gamma,
        "cron": stream.cron or "",
        "epoch_s": stream.epoch_s,
    }


def _trigger_fields(trigger: DriftTrigger | None) -> dict[str, object]:
    if trigger is None:
        return {"trigger_below": "", "trigger_drop": "", "trigger_min_gap_s": ""}
    return {
        "trigger_below": trigger.below,
        "trigger_drop": trigger.drop,
        "trigger_min_gap_s": trigger.min_gap_s,
    }


def write_streams(streams: Iterable[StreamSpec], path: str | Path) -> int:
    """Write streams in the canonical streams schema (atomically); returns the count."""
    return write_rows(path, STREAM_COLUMNS, (stream_row(s) for s in streams))


def read_streams(path: str | Path) -> list[StreamSpec]:
    streams: list[StreamSpec] = []
    seen: set[str] = set()
    for row in read_rows(path, ("id", "window_s", "windows", "configs", "throughput")):
        stream = _stream_from_row(row)
        if stream.id in seen:
            raise row.error("id", f"duplicate stream id {stream.id!r}")
        seen.add(stream.id)
        streams.append(stream)
    if not streams:
        raise TraceError(path, "no streams")
    return streams


def _stream_from_row(row: Row) -> StreamSpec:
    window = row.number("window_s", float)
    models = row.text("allowed_models", "")
    initial = (row.values.get("initial_accuracy") or "").strip()
    try:
        return StreamSpec(
            id=row.text("id"),
            start_s=row.number("start_s", float, 0.0),
            window_s=window,
            windows=row.number("windows", int),
            deadline_s=row.number("deadline_s", float, window),
            task=TaskRequest(
                row.number("cpu_milli", int, 0),
                row.number("mem_mib", int, 0),
                1,
                row.number("gpu_milli", int, 1000),
            ),
            throughput=_parse_pairs(row, "throughput"),
            curve=AccuracyCurve(
                row.number("ceiling", float),
                row.number("floor", float),
                row.number("decay_per_h", float),
                row.number("half_gain_gpu_s", float),
            ),
            configs=_parse_configs(row),
            default_config=row.number("default_config", int, 0),
            initial_accuracy=float(initial) if initial else None,
            max_gpus=row.number("max_gpus", int, 1),
            min_gpus=row.number("min_gpus", int, 1),
            scaling=row.number("scaling", float, 0.9),
            allowed_models=frozenset(models.split("|")) if models else None,
            restart_cost_s=row.number("restart_cost_s", float, 10.0),
            priority=row.number("priority", int, 0, minimum=None),
            drift=DriftProfile(
                row.number("shift_prob", float, 0.0), row.number("shift_mean", float, 0.0)
            ),
            drift_seed=row.number("drift_seed", int, 0),
            trigger=_parse_trigger(row),
            inference_milli=row.number("inference_milli", int, 0),
            inference_gamma=row.number("inference_gamma", float, 0.5),
            cron=_parse_cron(row),
            epoch_s=row.number("epoch_s", float, 0.0, minimum=None),
        )
    except ValueError as err:
        if isinstance(err, TraceError):
            raise
        raise row.error("", str(err)) from None


def _parse_cron(row: Row) -> str | None:
    text = row.text("cron", "")
    if not text:
        return None
    try:
        CronSchedule(text)
    except ValueError as err:
        raise row.error("cron", str(err)) from None
    return text


def _parse_trigger(row: Row) -> DriftTrigger | None:
    below = row.number("trigger_below", float, 0.0)
    drop = row.number("trigger_drop", float, 0.0)
    if below == drop == 0:
        return None
    return DriftTrigger(below, drop, row.number("trigger_min_gap_s", float, 600.0))


def _pairs(table: Mapping[str, float]) -> str:
    return ";".join(f"{k}={v!r}" for k, v in sorted(table.items()))


def _parse_pairs(row: Row, field: str) -> dict[str, float]:
    table: dict[str, float] = {}
    for part in row.text(field).split(";"):
        key, sep, raw = part.partition("=")
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not sep or not key.strip() or value < 0 or not math.isfinite(value):
            raise row.error(field, f"expected NAME=number >= 0, got {part!r}")
        table[key.strip()] = value
    return table


def _parse_configs(row: Row) -> tuple[RetrainConfig, ...]:
    configs = []
    for part in row.text("configs").split(";"):
        name, sep, rest = part.partition("=")
        work, colon, quality = rest.partition(":")
        try:
            configs.append(RetrainConfig(name.strip(), float(work), float(quality)))
        except ValueError:
            raise row.error("configs", f"expected name=work:quality, got {part!r}") from None
        if not sep or not colon or not name.strip():
            raise row.error("configs", f"expected name=work:quality, got {part!r}")
    return tuple(configs)


# -- batch jobs mixed in ------------------------------------------------------------------


def batch_path(streams_path: str | Path) -> Path:
    """Where the batch jobs of a continual trace live: `NAME.batch.csv` beside `NAME.csv`."""
    path = Path(streams_path)
    return path.with_name(f"{path.stem}.batch.csv")


def load_continual(path: str | Path) -> tuple[list[StreamSpec], list[JobSpec]]:
    """Streams and, when the batch file exists beside them, their batch jobs."""
    streams = read_streams(path)
    batch = batch_path(path)
    jobs = list(canonical.read_jobs(batch)) if batch.is_file() else []
    return streams, jobs


def mix_jobs(
    horizon_s: float,
    trace: str | None = None,
    trace_format: str = "canonical",
    num_jobs: int = 0,
    jobs_per_hour: float = 2.5,
    seed: int = 0,
) -> list[JobSpec]:
    """Batch jobs submitted before `horizon_s`: from a trace in any supported format, or
    `num_jobs` synthetic jobs (Gavel's mix) sped up per GPU model like the streams."""
    if trace is not None:
        jobs = load_jobs(trace, trace_format)
    elif num_jobs > 0:
        synthetic = SyntheticSpec(num_jobs, jobs_per_hour, relative_speed=SIA_SPEEDS)
        jobs = generate_jobs(synthetic, seed)
    else:
        return []
    return [j for j in jobs if j.submit_time < horizon_s]


# -- `gpufleet traces generate --kind continual` --------------------------------------------


def add_continual_generate_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("continual traces (--kind continual)")
    defaults = ContinualSpec()
    group.add_argument("--streams", type=int, default=defaults.streams, help="model streams")
    group.add_argument("--windows", type=int, default=defaults.windows, help="windows per stream")
    group.add_argument("--window-s", type=float, default=defaults.window_s, help="window length")
    group.add_argument(
        "--deadline-fraction",
        type=float,
        default=defaults.deadline_fraction,
        help="retraining deadline as a fraction of the window (default: 1)",
    )
    group.add_argument(
        "--request-milli",
        type=int,
        default=defaults.request_milli,
        help="milli-GPU each retraining job requests (default: one whole GPU)",
    )
    group.add_argument("--max-gpus", type=int, default=defaults.max_gpus, help="largest share")
    group.add_argument("--min-gpus", type=int, default=defaults.min_gpus, help="smallest share")
    group.add_argument(
        "--trigger-drop",
        type=float,
        default=defaults.trigger_drop,
        help="retrain on this accuracy drop since the last deployment instead of every "
        "window (default: 0, periodic)",
    )
    group.add_argument(
        "--trigger-min-gap-s",
        type=float,
        default=defaults.trigger_min_gap_s,
        help="least seconds between a stream's drift triggers (default: %(default)s)",
    )
    group.add_argument(
        "--inference-milli",
        type=int,
        default=defaults.inference_milli,
        help="milli-GPU each stream's inference asks for (default: 0, none)",
    )
    group.add_argument(
        "--inference-gamma",
        type=float,
        default=defaults.inference_gamma,
        help="serving quality (grant/demand)^gamma (default: %(default)s)",
    )
    group.add_argument("--mix-trace", help="batch jobs to mix in, from any supported trace")
    group.add_argument("--mix-format", default="canonical", choices=sorted(FORMATS))
    group.add_argument("--mix-jobs", type=int, default=0, help="synthetic batch jobs to mix in")
    group.add_argument("--mix-rate", type=float, default=2.5, help="their arrivals per hour")


def generate_continual_trace(args: argparse.Namespace) -> int:
    """Write the streams to `args.out` and any batch jobs to `batch_path(args.out)`."""
    spec = ContinualSpec(
        streams=args.streams,
        windows=args.windows,
        window_s=args.window_s,
        deadline_fraction=args.deadline_fraction,
        request_milli=args.request_milli,
        max_gpus=args.max_gpus,
        min_gpus=args.min_gpus,
        trigger_drop=args.trigger_drop,
        trigger_min_gap_s=args.trigger_min_gap_s,
        inference_milli=args.inference_milli,
        inference_gamma=args.inference_gamma,
    )
    streams = generate_streams(spec, args.seed)
    horizon = spec.windows * spec.window_s
    batch = mix_jobs(
        horizon, args.mix_trace, args.mix_format, args.mix_jobs, args.mix_rate, args.seed
    )
    out = Path(args.out)
    if batch:
        canonical.write_jobs(batch, batch_path(out))
    count = write_streams(streams, out)
    mixed = f" and {len(batch)} batch jobs to {batch_path(out)}" if batch else ""
    print(f"wrote {count} streams ({count * spec.windows} windows) to {out}{mixed}")
    return 0


def describe_streams(streams: Sequence[StreamSpec]) -> list[str]:
    """Facts about a streams file: size, span and offered retraining load."""
    work = sum(s.configs[s.default_config].work_gpu_s * s.windows for s in streams)
    span = max(s.end_s for s in streams) - min(s.start_s for s in streams)
    return [
        f"streams: {len(streams)}",
        f"windows: {sum(s.windows for s in streams)}",
        f"span: {span:.0f} s",
        f"default-config retraining work: {work / 3600:.1f} reference-GPU-hours",
    ]
