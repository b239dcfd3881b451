"""The DRA options (`DraOptions`) and their flags, shared by `controller run|serve|record`."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from controller.dra.inventory import GPU_DRIVERS, DraState
from policies.gpu_models import DRA_PRODUCT_ATTRIBUTES


@dataclass(frozen=True)
class DraOptions:
    enabled: bool = True
    """Read ResourceSlices, DeviceClasses and ResourceClaims and place pods with claims."""
    gpu_drivers: tuple[str, ...] = GPU_DRIVERS
    """Drivers whose node-local devices are GPUs."""
    product_attributes: tuple[str, ...] = DRA_PRODUCT_ATTRIBUTES
    """Device attributes naming the GPU product, tried in order (`gpu_models.dra_product`)."""

    def state(self) -> DraState:
        return DraState(self.gpu_drivers, self.product_attributes)


def add_dra_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Dynamic Resource Allocation (resource.k8s.io/v1)")
    group.add_argument(
        "--dra",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="read ResourceSlices, DeviceClasses and ResourceClaims and place pods with "
        "claims (default: on; --no-dra for clusters that do not serve resource.k8s.io/v1)",
    )
    group.add_argument(
        "--dra-gpu-driver",
        action="append",
        metavar="DRIVER",
        help=f"a driver whose node-local devices are GPUs; repeat for several "
        f"(default: {', '.join(GPU_DRIVERS)})",
    )
    group.add_argument(
        "--dra-product-attribute",
        action="append",
        metavar="NAME",
        help="a device attribute naming the GPU product, tried in the order given "
        f"(default: {', '.join(DRA_PRODUCT_ATTRIBUTES)})",
    )


def dra_options(args: argparse.Namespace) -> DraOptions:
    return DraOptions(
        enabled=args.dra,
        gpu_drivers=tuple(args.dra_gpu_driver or GPU_DRIVERS),
        product_attributes=tuple(args.dra_product_attribute or DRA_PRODUCT_ATTRIBUTES),
    )
