"""Consumable capacity (KEP-5075, `DRAConsumableCapacity`): what a share of a device
charges, and the share as milli-GPU for the policies.

A device with `allowMultipleAllocations` may be held by several claims. A requested
amount is rounded up by the capacity's `requestPolicy` (`validValues`, or `validRange`
min + k·step, none beyond `max`); a capacity not requested is charged at its policy's
default, or in full without a policy. The share's milli-GPU is its largest charged
fraction of any capacity, rounded up, so that shares whose milli-GPU fit in 1000 never
exceed a capacity.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal

from controller.dra.objects import Device
from policies import MILLI


def consumed(device: Device, wanted: Mapping[str, Decimal]) -> dict[str, Decimal]:
    """What a share of `device` charges for each of its capacities: a requested
    amount rounded up by its policy, an unrequested one at its policy's default
    or, without one, in full (kube-scheduler's rule)."""
    amounts = {}
    for domain, named in device.capacity.items():
        for name, capacity in named.items():
            qualified = name if domain == device.driver else f"{domain}/{name}"
            amount = wanted.get(qualified, wanted.get(f"{domain}/{name}"))
            if amount is not None:
                cost = charged(device, qualified, amount)
            elif capacity.policy is not None and capacity.policy.default is not None:
                cost = capacity.policy.default
            else:
                cost = capacity.value
            amounts[qualified] = cost if cost is not None else capacity.value
    return amounts


def charged(device: Device, name: str, amount: Decimal) -> Decimal | None:
    """What a request for `amount` of capacity `name` charges on `device` (None: the
    device cannot serve it)."""
    capacity = device.capacity_of(name)
    if capacity is None or amount > capacity.value:
        return None
    if not device.shareable or capacity.policy is None:
        return amount
    rounded = capacity.policy.round_up(amount)
    return rounded if rounded is not None and rounded <= capacity.value else None


def share_milli(device: Device, amounts: Mapping[str, Decimal]) -> int:
    """A share's milli-GPU: its largest consumed fraction of a capacity, rounded up, so
    that shares that fit in milli never exceed any capacity."""
    fractions = [Decimal(0)]
    for name, amount in amounts.items():
        capacity = device.capacity_of(name)
        if capacity is not None and capacity.value > 0:
            fractions.append(amount / capacity.value)
    return max(1, min(MILLI, math.ceil(max(fractions) * MILLI)))
