"""Fault kinds and the spec union that scenario YAML embeds under `fault:`.

`FaultSpec` picks the model by the `kind` field (`instance-kill`, `partition`, `flood`);
`build_fault` turns a spec into the matching fault object.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from chaos.faults.base import (
    Fault,
    FaultPlan,
    FaultResult,
    FaultRevertFailed,
    InjectResult,
    RevertResult,
    VerifyResult,
)
from chaos.faults.flood import TrafficFlood, TrafficFloodPlan, TrafficFloodSpec
from chaos.faults.instance_kill import InstanceKill, InstanceKillPlan, InstanceKillSpec
from chaos.faults.network_policy import NetworkPolicyPartition, NetworkPolicySpec
from chaos.faults.node_drain import NodeDrain, NodeDrainSpec
from chaos.faults.partition import Partition, PartitionPlan, PartitionSpec
from chaos.faults.pod_kill import PodKill, PodKillSpec
from stormgate.errors import UsageError

AnyFaultSpec = InstanceKillSpec | PartitionSpec | TrafficFloodSpec | PodKillSpec | NetworkPolicySpec | NodeDrainSpec
FaultSpec = Annotated[AnyFaultSpec, Field(discriminator="kind")]
"""Settings of any fault kind, chosen by `kind`."""

FAULT_SPEC_ADAPTER: TypeAdapter[AnyFaultSpec] = TypeAdapter(FaultSpec)

KINDS = ("instance-kill", "partition", "flood", "pod-kill", "network-policy", "node-drain")


def build_fault(spec: AnyFaultSpec) -> Fault[Any]:
    """Return the fault object for a spec; one object carries one injection at a time."""
    if isinstance(spec, InstanceKillSpec):
        return InstanceKill(spec)
    if isinstance(spec, PartitionSpec):
        return Partition(spec)
    if isinstance(spec, PodKillSpec):
        return PodKill(spec)
    if isinstance(spec, NetworkPolicySpec):
        return NetworkPolicyPartition(spec)
    if isinstance(spec, NodeDrainSpec):
        return NodeDrain(spec)
    return TrafficFlood(spec)


def fault_for_kind(kind: str) -> Fault[Any]:
    """Return a fault object able to revert plans of this kind, as a cleanup needs without the spec."""
    if kind == "instance-kill":
        return InstanceKill(InstanceKillSpec())
    if kind == "partition":
        return Partition(PartitionSpec())
    if kind == "flood":
        return TrafficFlood(TrafficFloodSpec(min_rps=1.0))
    if kind == "pod-kill":
        return PodKill(PodKillSpec())
    if kind == "network-policy":
        return NetworkPolicyPartition(NetworkPolicySpec())
    if kind == "node-drain":
        return NodeDrain(NodeDrainSpec())
    raise UsageError(f"Fault kind {kind!r} is unknown; known kinds are {', '.join(KINDS)}")


__all__ = [
    "FAULT_SPEC_ADAPTER",
    "KINDS",
    "AnyFaultSpec",
    "Fault",
    "FaultPlan",
    "FaultResult",
    "FaultRevertFailed",
    "FaultSpec",
    "InjectResult",
    "InstanceKill",
    "InstanceKillPlan",
    "InstanceKillSpec",
    "Partition",
    "PartitionPlan",
    "PartitionSpec",
    "RevertResult",
    "TrafficFlood",
    "TrafficFloodPlan",
    "TrafficFloodSpec",
    "VerifyResult",
    "build_fault",
    "fault_for_kind",
]
