"""Why a SLURM job can never start, read from SLURM's own text.

A job that asks for more than any node of its partition has (64 CPUs of a 2-CPU
node, more memory or GPUs than a node holds, a longer time limit than the
partition allows) is accepted by ``sbatch`` and then pends for ever, with a reason
such as ``PartitionConfig``. This module holds what decides that: which pending
reasons are permanent, what a job asks for (:class:`Request`, from ``scontrol show
job`` or from the launcher's settings), what a partition offers (:class:`Partition`
and its :class:`Node` s, from ``scontrol show partition``/``node``), what it can
never give, and the one-line message (:class:`SlurmRequestError`) that names what
was asked for, what the nodes offer and which setting to change. Reasons that clear
with time (``Resources``, ``Priority``, ``JobArrayTaskLimit``, ``Dependency``,
``BeginTime``, per-user limits, ...) are not permanent.

Everything here is a plain function of ``scontrol``/``squeue`` text: the tests call
it without a cluster. :mod:`vaelab.slurm_watch` runs the commands and watches a
launch's jobs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from vaelab.exceptions import ConfigError

#: pending reasons that never clear without someone changing the job or the cluster
PERMANENT_REASONS = frozenset(
    {
        "PartitionConfig",  # the request exceeds what the partition's nodes have
        "PartitionTimeLimit",  # a time limit longer than the partition's
        "BadConstraints",
        "DependencyNeverSatisfied",
        "InvalidAccount",
        "InvalidQOS",
        "AccountNotAllowed",
        "QOSNotAllowed",
    }
)
#: per-job (and per-node-of-a-job) limits of a QOS or an association, and QOS minimums:
#: a job over them never fits (per-user, per-account and group limits clear as other jobs end)
_PER_JOB_LIMIT = re.compile(r"^(?:QOS|Assoc)Max\w*Per(?:Job|Node)|^QOSMin")
#: reasons that also mean "a node is down, drained or reserved", which passes: they are
#: permanent only when no set of the partition's nodes could hold the job at all
IF_NO_NODE_FITS = frozenset({"ReqNodeNotAvail", "PartitionNodeLimit"})
#: the launcher setting behind each resource, for the message
SETTINGS = {
    "cpus": "hydra.launcher.cpus_per_task (x tasks_per_node)",
    "memory": "hydra.launcher.mem_gb",
    "gpus": "hydra.launcher.gpus_per_node",
    "nodes": "hydra.launcher.nodes",
    "time": "hydra.launcher.timeout_min",
}


class SlurmRequestError(ConfigError):
    """The cluster can never run the jobs as they were asked for (reported in one line)."""


# -- reading scontrol / squeue ------------------------------------------------------
_FIELD = re.compile(r"(?:^|\s)([A-Za-z][\w:/]*)=(.*?)(?=\s+[A-Za-z][\w:/]*=|\s*$)")


def parse_records(text: str) -> list[dict[str, str]]:
    """``scontrol show ... --oneliner`` output: one ``{key: value}`` per line."""
    return [{key: value.strip() for key, value in _FIELD.findall(line)} for line in text.splitlines() if "=" in line]


def reason_code(reason: str) -> str:
    """The code of a pending reason (``"ReqNodeNotAvail, UnavailableNodes:n1"`` -> ``ReqNodeNotAvail``)."""
    return re.split(r"[\s,(]", reason.strip(), maxsplit=1)[0]


def is_permanent(reason: str) -> bool:
    """Whether a job pending for ``reason`` can never start as it is, whatever the
    cluster's load (the reasons of :data:`IF_NO_NODE_FITS` are decided by
    :func:`never_starts`)."""
    code = reason_code(reason)
    return code in PERMANENT_REASONS or _PER_JOB_LIMIT.match(code) is not None


def megabytes(text: str | None) -> float | None:
    """``"2000M"``, ``"16G"``, ``"1T"``, ``"23081"`` (MB) -> MB; None when unknown or unlimited."""
    match = re.fullmatch(r"\s*([\d.]+)\s*([KMGTP]?)B?\s*", text or "", flags=re.IGNORECASE)
    if not match:
        return None
    scale = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024**2, "P": 1024**3}[match.group(2).upper()]
    return float(match.group(1)) * scale


def minutes(text: str | None) -> float | None:
    """A SLURM time (``"04:00:00"``, ``"1-00:00:00"``, ``"30:00"``, ``"90"``) in minutes;
    None for ``UNLIMITED``/``INFINITE`` or anything unreadable."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", (text or "").strip())
    if not match:
        return None
    days, first, second, third = (int(g) if g else None for g in match.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        hours, mins, secs = first, second or 0, third or 0
    elif third is not None:  # HH:MM:SS
        hours, mins, secs = first, second, third
    elif second is not None:  # MM:SS
        hours, mins, secs = 0, first, second
    else:  # MM
        hours, mins, secs = 0, first, 0
    return (days or 0) * 1440 + hours * 60 + mins + secs / 60


def gpu_count(text: str | None) -> int:
    """GPUs in a Gres/TRES string: ``"gpu:2"``, ``"gpu:a100:4(S:0-1)"``, ``"gres:gpu:1"``, ``"gres/gpu=2"``."""
    total = 0
    for item in (text or "").split(","):
        match = re.search(r"gpu(?:[:=][A-Za-z][\w.-]*)?[:=](\d+)", item)
        if match:
            total += int(match.group(1))
    return total


def _tres(text: str | None) -> dict[str, str]:
    return dict(item.split("=", 1) for item in (text or "").split(",") if "=" in item)


def _first_int(text: str | None, default: int) -> int:
    match = re.match(r"\s*(\d+)", text or "")
    return int(match.group(1)) if match else default


# -- what a job asks for, what a partition offers ----------------------------------
@dataclass(frozen=True)
class Request:
    """What one job asks for, per node."""

    partition: str | None
    nodes: int = 1
    cpus_per_node: int = 1
    memory_mb_per_node: float | None = None
    gpus_per_node: int = 0
    time_min: float | None = None

    @classmethod
    def from_job(cls, job: Mapping[str, str]) -> Request:
        """From a record of ``scontrol show job --oneliner``."""
        tres = _tres(job.get("TRES") or job.get("ReqTRES"))
        nodes = _first_int(job.get("NumNodes") or tres.get("node"), 1)
        cpus = _first_int(job.get("MinCPUsNode"), 0) or math.ceil(_first_int(tres.get("cpu"), 1) / nodes)
        memory = megabytes(job.get("MinMemoryNode"))
        if memory is None and megabytes(job.get("MinMemoryCPU")) is not None:
            memory = megabytes(job.get("MinMemoryCPU")) * cpus  # type: ignore[operator]
        if memory is None and megabytes(tres.get("mem")) is not None:
            memory = megabytes(tres.get("mem")) / nodes  # type: ignore[operator]
        gpus = gpu_count(job.get("TresPerNode")) or math.ceil(
            gpu_count(",".join(f"{k}={v}" for k, v in tres.items())) / nodes
        )
        return cls(job.get("Partition") or None, nodes, cpus, memory or None, gpus, minutes(job.get("TimeLimit")))

    @classmethod
    def from_launcher(cls, params: Mapping[str, Any]) -> Request:
        """From the launcher's settings (hydra.launcher.*), for a request sbatch refused."""

        def number(key: str, default: float | None) -> Any:
            value = params.get(key)
            return default if value is None else value

        tasks = int(number("tasks_per_node", 1))
        memory = number("mem_gb", None)
        return cls(
            params.get("partition") or None,
            int(number("nodes", 1)),
            tasks * int(number("cpus_per_task", 1)),
            None if memory is None else float(memory) * 1024,
            int(number("gpus_per_node", 0)),
            None if params.get("timeout_min") is None else float(params["timeout_min"]),
        )


@dataclass(frozen=True)
class Node:
    name: str
    cpus: int
    memory_mb: float
    gpus: int

    @classmethod
    def from_record(cls, node: Mapping[str, str]) -> Node:
        cpus = _first_int(node.get("CPUEfctv") or node.get("CPUTot"), 0)
        return cls(
            node.get("NodeName", "?"), cpus, megabytes(node.get("RealMemory")) or 0.0, gpu_count(node.get("Gres"))
        )

    def describe(self) -> str:
        gpus = f", {self.gpus} GPU{'s' if self.gpus != 1 else ''}" if self.gpus else ", no GPU"
        return f"{self.cpus} CPUs, {gb(self.memory_mb)} memory{gpus}"


@dataclass(frozen=True)
class Partition:
    name: str
    nodes: tuple[Node, ...]
    max_time_min: float | None = None
    max_nodes: int | None = None
    default: bool = False

    @classmethod
    def from_records(cls, partition: Mapping[str, str], nodes: Iterable[Mapping[str, str]]) -> Partition:
        name = partition.get("PartitionName", "?")
        members = tuple(Node.from_record(n) for n in nodes if name in (n.get("Partitions") or "").split(","))
        max_nodes = partition.get("MaxNodes", "")
        return cls(
            name,
            members,
            minutes(partition.get("MaxTime")),
            int(max_nodes) if max_nodes.isdigit() else None,
            partition.get("Default", "").upper() == "YES",
        )

    def node_limit(self) -> int:
        return min(len(self.nodes), self.max_nodes) if self.max_nodes is not None else len(self.nodes)

    def describe(self) -> str:
        """``partition debug has 1 node with 2 CPUs, 22.5 GB memory, no GPU, and no time limit``."""
        if not self.nodes:
            return f"partition {self.name} has no nodes"
        shapes: dict[str, int] = {}
        for node in self.nodes:
            shapes[node.describe()] = shapes.get(node.describe(), 0) + 1
        listed = "; ".join(f"{count} node{'s' if count != 1 else ''} with {shape}" for shape, count in shapes.items())
        limit = "no time limit" if self.max_time_min is None else f"a time limit of {self.max_time_min:g} min"
        return f"partition {self.name} has {listed}, and {limit}"


def gb(memory_mb: float) -> str:
    return f"{memory_mb / 1024:.3g} GB"


def fits(request: Request, node: Node) -> bool:
    return (
        request.cpus_per_node <= node.cpus
        and (request.memory_mb_per_node is None or request.memory_mb_per_node <= node.memory_mb)
        and request.gpus_per_node <= node.gpus
    )


def shortfalls(request: Request, partition: Partition) -> list[tuple[str, str]]:
    """``(resource, what was asked and what there is)`` for each thing the partition can
    never give the job; empty when it could."""
    nodes = partition.nodes
    if not nodes:
        return [("nodes", f"{request.nodes} node(s) (the partition has none)")]
    found: list[tuple[str, str]] = []
    most_cpus = max(n.cpus for n in nodes)
    most_memory = max(n.memory_mb for n in nodes)
    most_gpus = max(n.gpus for n in nodes)
    if request.cpus_per_node > most_cpus:
        found.append(("cpus", f"{request.cpus_per_node} CPUs per node (nodes here have at most {most_cpus})"))
    if request.memory_mb_per_node is not None and request.memory_mb_per_node > most_memory:
        found.append(
            ("memory", f"{gb(request.memory_mb_per_node)} memory per node (nodes here have at most {gb(most_memory)})")
        )
    if request.gpus_per_node > most_gpus:
        gpus = f"{request.gpus_per_node} GPU{'s' if request.gpus_per_node != 1 else ''}"
        have = f"at most {most_gpus}" if most_gpus else "none"
        found.append(("gpus", f"{gpus} per node (nodes here have {have})"))
    if not found:
        able = min(sum(fits(request, n) for n in nodes), partition.node_limit())
        if able == 0:
            found.append(("cpus", f"{describe_request(request)} (no node has all of it)"))
        elif request.nodes > able:
            found.append(("nodes", f"{request.nodes} nodes (the partition has {able} that could run it)"))
    if (
        request.time_min is not None
        and partition.max_time_min is not None
        and request.time_min > partition.max_time_min
    ):
        limit = f"{request.time_min:g} min (the partition allows at most {partition.max_time_min:g})"
        found.append(("time", f"a time limit of {limit}"))
    return found


def never_starts(reason: str, request: Request | None, partition: Partition | None) -> bool:
    """Whether a job pending for ``reason`` can never start: a permanent reason, or one
    of :data:`IF_NO_NODE_FITS` where the partition's nodes could never hold the job."""
    if is_permanent(reason):
        return True
    if reason_code(reason) in IF_NO_NODE_FITS and request is not None and partition is not None:
        return bool(shortfalls(request, partition))
    return False


def message(
    request: Request,
    partition: Partition | None,
    *,
    job_id: str | None = None,
    tasks: int = 1,
    reason: str | None = None,
    refused: str | None = None,
    partitions: Iterable[str] = (),
) -> str:
    """The one line that stops the sweep: what was asked for, what the cluster offers,
    what happened to the jobs and which setting to change. Either ``job_id`` and
    ``reason`` (a pending job, now cancelled) or ``refused`` (sbatch's complaint)."""
    if refused is not None:
        head = f"sbatch refused this sweep's jobs ({refused})"
    else:
        jobs = f"job array {job_id} of this sweep ({tasks} jobs" if tasks > 1 else f"job {job_id} of this sweep (1 job"
        head = f"SLURM can never start {jobs} pending with reason {reason_code(reason or '')})"
    if partition is None:
        detail = (
            f"partition {request.partition} does not exist here (partitions: {', '.join(partitions) or 'none found'})"
        )
        advice = "Set hydra.launcher.partition to one of them"
    else:
        missing = shortfalls(request, partition)
        asked = " and ".join(text for _, text in missing) if missing else describe_request(request)
        detail = f"each asks for {asked}; {partition.describe()}"
        if missing:
            settings = ", ".join(sorted({SETTINGS[key] for key, _ in missing}))
            advice = f"lower {settings} or choose another hydra.launcher.partition"
        else:
            advice = "lower the resources of hydra.launcher, or change its qos, account or partition"
        if refused is None:
            advice = f"The job{'s were' if tasks > 1 else ' was'} cancelled (scancel {job_id}); {advice}"
        advice = advice[0].upper() + advice[1:]
    return f"{head}: {detail}. {advice}"


def describe_request(request: Request) -> str:
    """``2 node(s) with 4 CPUs, 16 GB memory and 1 GPU each, for 240 min``."""
    each = [f"{request.cpus_per_node} CPUs"]
    if request.memory_mb_per_node is not None:
        each.append(f"{gb(request.memory_mb_per_node)} memory")
    if request.gpus_per_node:
        each.append(f"{request.gpus_per_node} GPU{'s' if request.gpus_per_node != 1 else ''}")
    listed = ", ".join(each[:-1]) + " and " + each[-1] if len(each) > 1 else each[0]
    text = f"{request.nodes} node(s) with {listed} each"
    return text + (f", for {request.time_min:g} min" if request.time_min is not None else "")
