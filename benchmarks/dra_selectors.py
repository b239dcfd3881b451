"""DRA inventory and CEL selector cost at cluster scale (issue 16).

A 1,000-node cluster of 8-GPU nodes (half A100, half T4), each GPU with its own UUID,
published as one ResourceSlice per node. Timed:

* `inventory`: decoding every slice and grouping the pools into node GPUs (a LIST);
* `new shape`: the nodes a new request shape fits (class selector plus a memory
  selector), with every cache cleared first, as when the first pod with that claim
  arrives;
* `per device`: the same selectors evaluated on every device without the view cache
  (the baseline: what evaluating each device with celpy costs; one run, it is slow);
* `uuid shape`: a selector on each device's UUID, which no two devices share (the
  view cache cannot help; each node stops at its first device that fails).

`python benchmarks/dra_selectors.py [--nodes 1000] [--repeat 3]`
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from controller.dra.inventory import CLASSES, SLICES, DraState
from controller.dra.selectors import _decide, _reads, _view, compile_selector

DRIVER = "gpu.nvidia.com"
CLASS = f"device.driver == '{DRIVER}' && device.attributes['{DRIVER}'].type == 'gpu'"
MEMORY = f"device.capacity['{DRIVER}'].memory.compareTo(quantity('40Gi')) >= 0"
UUID = f"device.attributes['{DRIVER}'].uuid.startsWith('GPU-1')"


def cluster(nodes: int) -> list[dict[str, Any]]:
    slices = []
    for i in range(nodes):
        product, memory = ("NVIDIA A100-SXM4-80GB", "80Gi") if i % 2 else ("Tesla T4", "16Gi")
        devices = [
            {
                "name": f"gpu-{j}",
                "attributes": {
                    "type": {"string": "gpu"},
                    "productName": {"string": product},
                    "uuid": {"string": f"GPU-{i}-{j}"},
                    "driverVersion": {"version": "550.54.15"},
                },
                "capacity": {"memory": {"value": memory}},
            }
            for j in range(8)
        ]
        slices.append(
            {
                "metadata": {"name": f"node-{i}"},
                "spec": {
                    "driver": DRIVER,
                    "nodeName": f"node-{i}",
                    "pool": {"name": f"node-{i}", "generation": 1, "resourceSliceCount": 1},
                    "devices": devices,
                },
            }
        )
    return slices


def timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def fresh_state(slices: list[dict[str, Any]]) -> DraState:
    state = DraState()
    state.replace(SLICES, slices)
    state.replace(
        CLASSES,
        [{"metadata": {"name": "gpu"}, "spec": {"selectors": [{"cel": {"expression": CLASS}}]}}],
    )
    return state


def eligible(state: DraState, selectors: tuple[str, ...]) -> int:
    """Nodes the shape fits, computed afresh (the state's and the views' caches cleared)."""
    _decide.cache_clear()
    state._fits.clear()
    return len(state._eligible(((selectors, (), False),)))


def per_device(state: DraState, selectors: tuple[str, ...]) -> int:
    """The baseline: every selector on every device, no view shared between devices."""
    evaluate = _decide.__wrapped__
    fits = 0
    for gpus in state.nodes.values():
        fits += all(evaluate(e, _view(d, None)) for d in gpus.devices for e in selectors)
    return fits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    slices = cluster(args.nodes)
    for expression in (CLASS, MEMORY, UUID):
        compile_selector(expression), _reads(expression)
    inventory = [timed(lambda: fresh_state(slices)) for _ in range(args.repeat)]
    state = fresh_state(slices)
    shape = [timed(lambda: eligible(state, (CLASS, MEMORY))) for _ in range(args.repeat)]
    uuid = [timed(lambda: eligible(state, (CLASS, UUID))) for _ in range(args.repeat)]
    found = {
        "new shape": eligible(state, (CLASS, MEMORY)),
        "per device": per_device(state, (CLASS, MEMORY)),
    }
    baseline = timed(lambda: per_device(state, (CLASS, MEMORY)))
    assert found["new shape"] == found["per device"], found
    devices = args.nodes * 8
    print(f"{args.nodes} nodes, {devices} GPUs; medians of {args.repeat} (per device: 1 run)")
    print("| step | seconds | nodes that fit |")
    print("|---|---|---|")
    print(f"| inventory (decode + group) | {statistics.median(inventory):.3f} | |")
    print(
        f"| new shape (memory selector) | {statistics.median(shape):.3f} | {found['new shape']} |"
    )
    print(f"| per device, no view cache (baseline) | {baseline:.3f} | {found['per device']} |")
    fit = eligible(state, (CLASS, UUID))
    print(f"| uuid shape (no two devices alike) | {statistics.median(uuid):.3f} | {fit} |")


if __name__ == "__main__":
    main()
