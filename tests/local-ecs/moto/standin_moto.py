"""moto 5.2.5 in server mode, patched into a faithful local ECS control plane.

Stock moto answers the ECS API but not like ECS: a task gets one container, every
DescribeTasks advances it towards a false "STOPPED, exit 0", the agent-side API
(SubmitTaskStateChange / SubmitContainerStateChange) is missing, and several errors come
back as HTTP 500 pages. An executor tested against that would learn the wrong lessons.
This module fixes that the way LocalStack extends moto: it monkeypatches moto's ECS
models and responses in place (classes in moto.ecs.models / moto.ecs.responses), and
wraps moto's WSGI app in a small middleware that adds fault injection and request
recording on the same port. What changes, in short (tests/local-ecs/CONTRACT.md is the
spec):
  * tasks: one container per container definition, PENDING until an agent reports,
    no auto-progression, real-looking 32-hex ids, timestamps, stopCode/stoppedReason,
    version; resources are held from RunTask until the task is STOPPED;
  * RunTask: placement failures in `failures`, the real error when the cluster has no
    container instances, clientToken idempotency;
  * StopTask: only asks to stop (desiredStatus), the agent finishes it; idempotent;
  * DescribeTasks: MISSING failures; ListTasks: desiredStatus defaults to RUNNING;
  * ListContainerInstances applies its `filter` (cluster query language);
  * SubmitTaskStateChange / SubmitContainerStateChange implemented;
  * /_standin/faults, /_standin/requests, /_standin/counts; /moto-api/reset clears them;
  * off by default (issue #15): ECS/EC2 throttling (standin_throttle.py, /_standin/throttling),
    several container instances with resources/zones/architecture and placement by
    strategy and constraints (/_standin/instances), capacity providers with managed scaling
    (PROVISIONING, simulated scale-out/scale-in, /_standin/scaling, /_standin/scale-events)
    and instance loss (Spot notice, termination, draining).
Run: $STATE/venv/bin/python standin_moto.py --host 127.0.0.1 --port 4580
"""

from __future__ import annotations

import argparse
import gzip
import inspect
import io
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import traceback
import uuid
from typing import Any
from urllib.parse import parse_qs

from moto.core.exceptions import ServiceException
from moto.core.responses import ActionResult
from moto.core.utils import utcnow
from moto.ecs import models as ecs_models
from moto.ecs import responses as ecs_responses
from moto.ecs.exceptions import (
    ClusterNotFoundException,
    InvalidParameterException,
    TaskDefinitionMemoryError,
    TaskDefinitionMissingPropertyError,
    EcsClientException,
)
from moto.moto_api._internal import mock_random
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from standin_throttle import (  # noqa: E402
    EC2_THROTTLE_CODE,
    EC2_THROTTLE_MESSAGE,
    ECS_THROTTLE_HEADER,
    ECS_THROTTLE_MESSAGE,
    ECS_THROTTLE_TYPE,
    Throttle,
)

Backend = ecs_models.EC2ContainerServiceBackend
Task = ecs_models.Task

log = logging.getLogger("standin_moto")

# The task lifecycle in order; an agent report never moves a task backwards
# (a late RUNNING after STOPPED is ignored, as ECS does).
STATUS_RANK = {
    "PROVISIONING": 0,
    "PENDING": 1,
    "ACTIVATING": 2,
    "RUNNING": 3,
    "DEACTIVATING": 4,
    "STOPPING": 5,
    "DEPROVISIONING": 6,
    "STOPPED": 7,
}
FAILED_TO_START_PREFIXES = (
    "CannotPullContainerError",
    "CannotCreateContainerError",
    "CannotStartContainerError",
)
TASK_NOT_FOUND = "The referenced task was not found."


# --------------------------------------------------------------------------------------
# Task and container model
# --------------------------------------------------------------------------------------


class StandinContainer:
    """One container of a task, as DescribeTasks shows it. moto's serializer reads the
    snake_case attributes for the botocore `Container` shape; None is omitted."""

    def __init__(self, task: Task, cdef: dict[str, Any]):
        self.container_arn = (
            f"arn:aws:ecs:{task.region_name}:{task._account_id}:container/"
            f"{task.cluster_name}/{task.id}/{mock_random.uuid4()}"
        )
        self.task_arn = task.task_arn
        self.name = cdef.get("name")
        self.image = cdef.get("image")
        self.image_digest = None
        self.runtime_id = None
        self.last_status = "PENDING"
        self.exit_code = None
        self.reason = None
        self.network_bindings: list[dict[str, Any]] = []
        self.network_interfaces: list[dict[str, Any]] = []
        self.health_status = "UNKNOWN"
        # The shape has these as strings (real ECS: "cpu": "0", "memory": "512").
        self.cpu = str(cdef.get("cpu") or 0)
        self.memory = str(cdef["memory"]) if cdef.get("memory") is not None else None
        self.memory_reservation = (
            str(cdef["memoryReservation"])
            if cdef.get("memoryReservation") is not None
            else None
        )


_orig_task_init = Task.__init__
_task_init_sig = inspect.signature(_orig_task_init)


def _task_init(self: Task, *args: Any, **kwargs: Any) -> None:
    _orig_task_init(self, *args, **kwargs)
    bound = _task_init_sig.bind(self, *args, **kwargs).arguments
    task_def = bound["task_definition"]
    # Real task ids are 32 hex digits; moto uses a dashed uuid. Callers that parse the id
    # out of an ARN (or put it in a container name) should see the real shape.
    self.id = mock_random.uuid4().hex
    # Bypass ManagedState: lastStatus is exactly what RunTask/the agent set (see the
    # last_status property below), starting at PENDING like ECS.
    self._status = "PENDING"
    self.containers = [StandinContainer(self, c) for c in task_def.container_definitions]
    self.created_at = utcnow()
    self.started_at = None
    self.stopping_at = None
    self.stopped_at = None
    self.execution_stopped_at = None
    self.pull_started_at = None
    self.pull_stopped_at = None
    self.connectivity = None
    self.stop_code = None
    self.stopped_reason = None  # moto uses "", which would be serialized
    self.health_status = "UNKNOWN"
    self.version = 1
    if not self.launch_type and self.container_instance_arn:
        self.launch_type = "EC2"
    # ECS reports the task-level size when the task definition has one.
    self.cpu = str(task_def.cpu) if task_def.cpu else None
    self.memory = str(task_def.memory) if task_def.memory else None
    # Which counter (PENDING/RUNNING) this task is counted in on its instance and
    # cluster; None once released. Resources are held while this is not None.
    self._standin_counted = None


def _last_status_get(self: Task) -> str:
    return self._status


def _last_status_set(self: Task, value: str) -> None:
    self._status = value


Task.__init__ = _task_init  # type: ignore[method-assign]
# moto's property consults the state manager, which walks RUNNING -> ... -> STOPPED on
# successive DescribeTasks. Reading the raw field removes that for ecs::task entirely.
Task.last_status = property(_last_status_get, _last_status_set)  # type: ignore[assignment]


_orig_ci_init = ecs_models.ContainerInstance.__init__


def _container_instance_init(self: Any, *args: Any, **kwargs: Any) -> None:
    _orig_ci_init(self, *args, **kwargs)
    self.id = mock_random.uuid4().hex  # real container instance ids are 32 hex too
    self.capacity_provider_name = None  # DescribeContainerInstances' capacityProviderName
    self._standin_busy_at = time.monotonic()  # last time it had a task (scale-in)
    self._standin_launched = False  # registered by a simulated scale-out


ecs_models.ContainerInstance.__init__ = _container_instance_init  # type: ignore[method-assign]


# --------------------------------------------------------------------------------------
# Backend helpers: lookup, resources, counters
# --------------------------------------------------------------------------------------


def _find_task(backend: Backend, cluster_name: str, ref: str | None) -> Task | None:
    """A task of this cluster by ARN (long or short form) or bare id."""
    if not ref:
        return None
    task_id = ref.split("/")[-1]
    for task in backend.tasks.get(cluster_name, {}).values():
        if ref == task.task_arn or task_id == task.id:
            return task
    return None


def _find_container_instance(backend: Backend, cluster_name: str, ref: str | None) -> Any:
    if not ref:
        return None
    return backend.container_instances.get(cluster_name, {}).get(ref.split("/")[-1])


def _size(value: Any, unit_word: str) -> int:
    """Task-level cpu/memory: "1024", "1 vCPU", "2 GB" -> CPU units / MiB."""
    text = str(value).strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(\w+)?", text)
    if not m:
        raise InvalidParameterException(f"Invalid {unit_word} value: {text}")
    number = float(m.group(1))
    if m.group(2) and m.group(2).lower() in ("vcpu", "gb"):
        number *= 1024
    return int(number)


def _requirements(task_def: Any, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """What a task reserves on its container instance. Unlike moto: the task-level size
    wins when set, a container with only memoryReservation counts that, hostPort 0
    (dynamic) reserves nothing, and host networking reserves the container port."""
    cpu = 0
    memory = 0
    ports: list[int] = []
    for cdef in task_def.container_definitions:
        cpu += int(cdef.get("cpu") or 0)
        memory += int(cdef.get("memory") or cdef.get("memoryReservation") or 0)
        for pm in cdef.get("portMappings") or []:
            port = pm.get("hostPort")
            if task_def.network_mode == "host" and not port:
                port = pm.get("containerPort")
            if port:
                ports.append(int(port))
    overrides = overrides or {}
    task_cpu = overrides.get("cpu") or task_def.cpu
    task_memory = overrides.get("memory") or task_def.memory
    if task_cpu:
        cpu = _size(task_cpu, "cpu")
    if task_memory:
        memory = _size(task_memory, "memory")
    return {"CPU": cpu, "MEMORY": memory, "PORTS": ports, "PORTS_UDP": []}


def _misfit(container_instance: Any, req: dict[str, Any]) -> str | None:
    """None if the task fits, else the ECS failure reason."""
    remaining = {r["name"]: r for r in container_instance.remaining_resources}
    if req["CPU"] > remaining["CPU"]["integerValue"]:
        return "RESOURCE:CPU"
    if req["MEMORY"] > remaining["MEMORY"]["integerValue"]:
        return "RESOURCE:MEMORY"
    taken = remaining["PORTS"].get("stringSetValue") or []
    if any(str(p) in taken for p in req["PORTS"]):
        return "RESOURCE:PORTS"
    return None


def _reserve(container_instance: Any, req: dict[str, Any], sign: int) -> None:
    for resource in container_instance.remaining_resources:
        if resource["name"] == "CPU":
            resource["integerValue"] -= sign * req["CPU"]
        elif resource["name"] == "MEMORY":
            resource["integerValue"] -= sign * req["MEMORY"]
        elif resource["name"] == "PORTS":
            for port in req["PORTS"]:
                if sign > 0:
                    resource["stringSetValue"].append(str(port))
                elif str(port) in resource["stringSetValue"]:
                    resource["stringSetValue"].remove(str(port))


def _count_as(backend: Backend, task: Task, new: str | None) -> None:
    """Move the task between the PENDING/RUNNING counters of its cluster and container
    instance; new=None releases it (and its reserved resources)."""
    old = task._standin_counted
    if old == new:
        return
    cluster = backend.clusters.get(task.cluster_name)
    ci = _find_container_instance(backend, task.cluster_name, task.container_instance_arn)
    for obj in (cluster, ci):
        if obj is None:
            continue
        if old:
            setattr(obj, f"{old.lower()}_tasks_count", getattr(obj, f"{old.lower()}_tasks_count") - 1)
        if new:
            setattr(obj, f"{new.lower()}_tasks_count", getattr(obj, f"{new.lower()}_tasks_count") + 1)
    if new is None and ci is not None and task.resource_requirements:
        _reserve(ci, task.resource_requirements, -1)
    task._standin_counted = new


# --------------------------------------------------------------------------------------
# Backend: replaced and new ECS operations
# --------------------------------------------------------------------------------------

_orig_run_task = Backend.run_task


def standin_run_task(
    self: Backend,
    cluster_str: str,
    task_definition_str: str,
    count: int,
    overrides: dict[str, Any] | None,
    started_by: str | None,
    tags: list[dict[str, str]] | None,
    launch_type: str | None,
    networking_configuration: dict[str, Any] | None = None,
    group: str | None = None,
    platform_version: str | None = None,
    capacity_provider_strategy: list[dict[str, Any]] | None = None,
    client_token: str | None = None,
    placement_constraints: list[dict[str, Any]] | None = None,
    placement_strategy: list[dict[str, Any]] | None = None,
) -> tuple[list[Task], list[dict[str, str]]]:
    """RunTask for the EC2 launch type: first-fit over ACTIVE instances, with the
    failures ECS reports. Fargate goes to moto unchanged (no instances involved)."""
    cluster = self._get_cluster(cluster_str)
    if client_token:
        # ECS RunTask is idempotent per clientToken: a retried call returns the same
        # tasks instead of starting more.
        tokens = self.__dict__.setdefault("_standin_run_tokens", {})
        if (cluster.name, client_token) in tokens:
            return tokens[(cluster.name, client_token)]
    if not 1 <= count <= 10:
        raise InvalidParameterException("count must be between 1 and 10.")
    if launch_type and launch_type not in ["EC2", "FARGATE", "EXTERNAL"]:
        raise InvalidParameterException("launch type should be one of [EC2,FARGATE,EXTERNAL]")
    if launch_type and capacity_provider_strategy:
        raise InvalidParameterException(
            "Specify either Launch Type or Capacity Provider Strategy, but not both."
        )
    if not launch_type and not capacity_provider_strategy:
        capacity_provider_strategy = cluster.default_capacity_provider_strategy
    provider = capacity_provider_strategy[0]["capacityProvider"] if capacity_provider_strategy else None
    if launch_type == "FARGATE" or provider in ("FARGATE", "FARGATE_SPOT"):
        result = (
            _orig_run_task(
                self, cluster_str, task_definition_str, count, overrides, started_by, tags,
                launch_type, networking_configuration, group, platform_version,
                capacity_provider_strategy,
            ),
            [],
        )
    else:
        task_def = self.describe_task_definition(task_definition_str)
        req = _requirements(task_def, overrides)
        constraints = list(task_def.placement_constraints or []) + list(placement_constraints or [])
        for c in constraints:
            if c.get("type") == "memberOf":
                parse_expression(c.get("expression") or "")  # InvalidParameterException if bad
        task_group = group or f"family:{task_def.family}"
        all_active = [
            ci for ci in self.container_instances.get(cluster.name, {}).values()
            if ci.status == "ACTIVE"
        ]
        tasks: list[Task] = []
        failures: dict[str, str] = {}
        for _ in range(count):
            provider = _choose_provider(self, cluster, capacity_provider_strategy) or provider
            cp = _provider_of(self, provider)
            if cp is None:
                # launchType EC2, or a strategy naming a provider this backend does not
                # know (older behaviour, kept): any ACTIVE instance of the cluster.
                instances = all_active
                if not instances:
                    raise InvalidParameterException("No Container Instances were found in your cluster.")
            else:
                instances = [ci for ci in all_active if getattr(ci, "capacity_provider_name", None) == cp.name]
                if not instances and not _managed(cp):
                    raise InvalidParameterException("No Container Instances were found in your cluster.")
            common = dict(
                group=task_group, overrides=overrides or {}, started_by=started_by or "",
                tags=tags or [], launch_type=launch_type or ("EC2" if cp else ""),
                networking_configuration=networking_configuration,
                capacity_provider_name=provider,
            )
            ci, misfits = _place(self, cluster.name, instances, req, constraints, task_group,
                                 placement_strategy)
            if ci is not None:
                task = Task(cluster, task_def, ci.container_instance_arn, req, backend=self, **common)
                _reserve(ci, req, +1)
                _count_as(self, task, "PENDING")
                self.tasks.setdefault(cluster.name, {})[task.task_arn] = task
                tasks.append(task)
                continue
            if cp is not None and _managed(cp):
                # ECS with managed scaling: the task waits for capacity instead of failing.
                waiting = sum(1 for t in self.tasks.get(cluster.name, {}).values() if t.last_status == "PROVISIONING")
                if waiting >= SCALING.config["provisioning_quota"]:
                    raise EcsClientException(PROVISIONING_QUOTA_MESSAGE)
                task = Task(cluster, task_def, None, req, backend=self, **common)
                task.last_status = "PROVISIONING"
                task._standin_constraints = constraints
                task._standin_provisioning_since = time.monotonic()
                self.tasks.setdefault(cluster.name, {})[task.task_arn] = task
                self.__dict__.setdefault("_standin_provisioning", []).append(task)
                tasks.append(task)
                track_backend(self)
                continue
            # Not placed anywhere: ECS names each instance and why it did not fit.
            for arn, why in misfits.items():
                failures.setdefault(arn, why)
            break  # later copies would not fit either
        result = (tasks, [{"arn": a, "reason": r} for a, r in failures.items()])
    if client_token:
        self.__dict__["_standin_run_tokens"][(cluster.name, client_token)] = result
    return result


def _run_task(self: Backend, *args: Any, **kwargs: Any) -> list[Task]:
    # Same signature and return type as moto's (other moto services call it).
    return standin_run_task(self, *args, **kwargs)[0]


def _describe_tasks(self: Backend, cluster_str: str, tasks: list[str]) -> list[Task]:
    return standin_describe_tasks(self, cluster_str, tasks)[0]


def standin_describe_tasks(
    self: Backend, cluster_str: str, refs: list[str]
) -> tuple[list[Task], list[dict[str, str]]]:
    """No advance() (moto's auto-progression), only this cluster's tasks, unknown ids
    reported as MISSING like ECS."""
    cluster = self._get_cluster(cluster_str)
    if not refs:
        raise InvalidParameterException("Tasks cannot be empty.")
    found: list[Task] = []
    failures: list[dict[str, str]] = []
    for ref in refs:
        task = _find_task(self, cluster.name, ref)
        if task is None:
            failures.append({"arn": ref, "reason": "MISSING"})
        elif task not in found:
            found.append(task)
    return found, failures


def _list_tasks(
    self: Backend,
    cluster_str: str | None = None,
    container_instance: str | None = None,
    family: str | None = None,
    started_by: str | None = None,
    service_name: str | None = None,
    desiredStatus: str | None = None,
) -> list[Task]:
    """moto's filters matched by substring (cluster "local" also matched "local2", and a
    Fargate task crashed the containerInstance filter). Exact matches here. No default
    for desiredStatus at this level: moto's tag lookup calls list_tasks() for all tasks;
    the RUNNING default lives in the ListTasks response handler."""
    if cluster_str:
        clusters = [self._get_cluster(cluster_str).name]
    else:
        clusters = list(self.tasks)
    result = []
    for name in clusters:
        for task in self.tasks.get(name, {}).values():
            if container_instance:
                ci_arn = task.container_instance_arn or ""
                if container_instance != ci_arn and container_instance.split("/")[-1] != ci_arn.split("/")[-1]:
                    continue
            if family and task.task_definition_arn.split("/")[-1].rsplit(":", 1)[0] != family:
                continue
            if started_by and task.started_by != started_by:
                continue
            if desiredStatus and task.desired_status != desiredStatus:
                continue
            result.append(task)
    return result


def _stop_task(self: Backend, cluster_str: str, task_str: str, reason: str | None) -> Task:
    """ECS only records the request; the agent stops the containers and reports STOPPED
    (that is when resources are released). Stopping a stopping/stopped task is a no-op."""
    cluster = self._get_cluster(cluster_str)
    task = _find_task(self, cluster.name, task_str)
    if task is None:
        raise InvalidParameterException(TASK_NOT_FOUND)
    if task.desired_status == "STOPPED" or task.last_status == "STOPPED":
        return task
    task.desired_status = "STOPPED"
    task.stop_code = "UserInitiated"
    task.stopped_reason = reason or "Task stopped by user"
    task.stopping_at = utcnow()
    task.version += 1
    if task.last_status == "PROVISIONING":
        # No instance, no agent: ECS ends a task that is still waiting for capacity itself.
        _stop_by_ecs(self, task, "UserInitiated", task.stopped_reason)
    return task


def _apply_container_change(task: Task, change: dict[str, Any]) -> None:
    name = change.get("containerName")
    container = next((c for c in task.containers if c.name == name), None)
    if container is None:
        raise InvalidParameterException(f"Container {name} not found in task {task.task_arn}.")
    status = change.get("status")
    if status and container.last_status != "STOPPED":
        if status not in STATUS_RANK:
            raise InvalidParameterException(f"Invalid container status: {status}")
        container.last_status = status
    for key, attr in (
        ("runtimeId", "runtime_id"),
        ("exitCode", "exit_code"),
        ("reason", "reason"),
        ("networkBindings", "network_bindings"),
        ("imageDigest", "image_digest"),
    ):
        if change.get(key) is not None:
            setattr(container, attr, change[key])


def _set_task_status(
    backend: Backend, task: Task, status: str, reason: str | None, execution_stopped_at: Any
) -> None:
    if status not in STATUS_RANK:
        raise InvalidParameterException(f"Invalid task status: {status}")
    if STATUS_RANK[status] <= STATUS_RANK.get(task.last_status, 0):
        return
    now = utcnow()
    task.last_status = status
    if status == "RUNNING":
        task.started_at = task.started_at or now
        task.connectivity = "CONNECTED"
        _count_as(backend, task, "RUNNING")
    elif status in ("DEACTIVATING", "STOPPING", "DEPROVISIONING"):
        task.stopping_at = task.stopping_at or now
    elif status == "STOPPED":
        task.desired_status = "STOPPED"
        task.stopping_at = task.stopping_at or now
        task.stopped_at = now
        task.execution_stopped_at = execution_stopped_at or now
        for c in task.containers:
            c.last_status = "STOPPED"
        container_reasons = [c.reason for c in task.containers if c.reason]
        if task.stop_code != "UserInitiated":
            # A StopTask (stopCode UserInitiated) keeps its code and reason; otherwise
            # the agent's reason decides, as ECS's own stop codes do.
            probe = [reason] if reason else container_reasons
            if any(r.startswith(FAILED_TO_START_PREFIXES) for r in probe):
                task.stop_code = "TaskFailedToStart"
                task.stopped_reason = reason or next(
                    r for r in probe if r.startswith(FAILED_TO_START_PREFIXES)
                )
            else:
                task.stop_code = "EssentialContainerExited"
                task.stopped_reason = reason or "Essential container in task exited"
        _count_as(backend, task, None)


def _submit_task_state_change(
    self: Backend,
    cluster_str: str,
    task_str: str,
    status: str | None,
    reason: str | None,
    containers: list[dict[str, Any]] | None,
    pull_started_at: Any = None,
    pull_stopped_at: Any = None,
    execution_stopped_at: Any = None,
) -> str:
    cluster = self._get_cluster(cluster_str)
    task = _find_task(self, cluster.name, task_str)
    if task is None:
        raise InvalidParameterException(TASK_NOT_FOUND)
    if task.last_status == "STOPPED":
        return "ACK"  # terminal: late reports are acknowledged and dropped
    for change in containers or []:
        _apply_container_change(task, change)
    if pull_started_at is not None:
        task.pull_started_at = pull_started_at
    if pull_stopped_at is not None:
        task.pull_stopped_at = pull_stopped_at
    if status:
        _set_task_status(self, task, status, reason, execution_stopped_at)
    task.version += 1
    return "ACK"


def _submit_container_state_change(
    self: Backend,
    cluster_str: str,
    task_str: str,
    change: dict[str, Any],
) -> str:
    cluster = self._get_cluster(cluster_str)
    task = _find_task(self, cluster.name, task_str)
    if task is None:
        raise InvalidParameterException(TASK_NOT_FOUND)
    if task.last_status != "STOPPED":
        _apply_container_change(task, change)
        task.version += 1
    return "ACK"


_orig_register_ci = Backend.register_container_instance


def _register_container_instance(
    self: Backend,
    cluster_str: str,
    ec2_instance_id: str,
    total_resources: list[dict[str, Any]] | None = None,
    attributes: list[dict[str, Any]] | None = None,
    capacity_provider: str | None = None,
) -> Any:
    """As the agent registers: its totalResources (CPU, MEMORY) replace moto's fixed
    4096/7482, its attributes are added (ecs.cpu-architecture defaults to this host's, as
    the agent reports its own), ecs.availability-zone/instance-type come from the EC2
    instance as in ECS."""
    if cluster_str.split("/")[-1] not in self.clusters:
        raise ClusterNotFoundException  # moto: bare Exception -> HTTP 500 page
    ci = _orig_register_ci(self, cluster_str, ec2_instance_id)
    for r in total_resources or []:
        if r.get("name") in ("CPU", "MEMORY") and r.get("integerValue") is not None:
            for res in (*ci.registered_resources, *ci.remaining_resources):
                if res["name"] == r["name"]:
                    res["integerValue"] = int(r["integerValue"])
    ci.attributes.setdefault("ecs.cpu-architecture", host_arch())
    # moto derives it from the AMI, and seed.py's AMI is a Windows one in moto's catalog; the
    # agent reports its own OS, and ours runs Linux containers (matters now that memberOf
    # constraints such as attribute:ecs.os-type == linux are enforced).
    ci.attributes["ecs.os-type"] = "linux"
    for a in attributes or []:
        if a.get("name"):
            ci.attributes[a["name"]] = a.get("value")
    ci.capacity_provider_name = capacity_provider
    track_backend(self)
    return ci


def _list_container_instances(self: Backend, cluster_str: str, status: str | None = None) -> list[str]:
    """Registration order (moto sorted by random id), and INACTIVE (terminated, deregistered)
    instances only when asked for by status, as in ECS."""
    cluster = self._get_cluster(cluster_str)
    return [
        ci.container_instance_arn
        for ci in self.container_instances.get(cluster.name, {}).values()
        if (ci.status == status if status else ci.status != "INACTIVE")
    ]


def _validate_container_defs(memory: Any, container_definitions: list[dict[str, Any]], requires_compatibilities: Any) -> None:
    """moto rejects an EC2 container that has only memoryReservation; ECS accepts it."""
    for cd in container_definitions:
        if "name" not in cd and "Name" not in cd:
            raise TaskDefinitionMissingPropertyError("name")
        if "image" not in cd and "Image" not in cd:
            raise TaskDefinitionMissingPropertyError("image")
        if not memory and not any(
            k in cd for k in ("memory", "Memory", "memoryReservation", "MemoryReservation")
        ):
            raise TaskDefinitionMemoryError(cd.get("name") or cd.get("Name"))


_orig_register_td = Backend.register_task_definition


def _register_task_definition(self: Backend, *args: Any, **kwargs: Any) -> Any:
    """ECS never reuses a revision number. moto numbered from the revisions still present, so
    after DeleteTaskDefinitions removed every revision of a family (as `ecs-executor gc` does)
    the next registration was `:1` again, an ARN an old task may still name."""
    highest: dict[str, int] = self.__dict__.setdefault("_standin_td_highest", {})
    td = _orig_register_td(self, *args, **kwargs)
    if td.revision <= highest.get(td.family, 0):
        del self.task_definitions[td.family][td.revision]
        td.revision = highest[td.family] + 1
        td.arn = f"{td.arn.rsplit(':', 1)[0]}:{td.revision}"
        self.task_definitions[td.family][td.revision] = td
    highest[td.family] = td.revision
    return td


Backend.register_task_definition = _register_task_definition  # type: ignore[method-assign]
Backend.run_task = _run_task  # type: ignore[method-assign]
Backend.standin_run_task = standin_run_task  # type: ignore[attr-defined]
Backend.describe_tasks = _describe_tasks  # type: ignore[method-assign]
Backend.standin_describe_tasks = standin_describe_tasks  # type: ignore[attr-defined]
Backend.list_tasks = _list_tasks  # type: ignore[method-assign]
Backend.stop_task = _stop_task  # type: ignore[method-assign]
Backend.submit_task_state_change = _submit_task_state_change  # type: ignore[attr-defined]
Backend.submit_container_state_change = _submit_container_state_change  # type: ignore[attr-defined]
Backend.register_container_instance = _register_container_instance  # type: ignore[method-assign]
Backend.list_container_instances = _list_container_instances  # type: ignore[method-assign]
Backend._validate_container_defs = staticmethod(_validate_container_defs)  # type: ignore[assignment]


# --------------------------------------------------------------------------------------
# A cluster at scale: several container instances, placement, capacity providers with
# managed scaling, instance loss. Off unless used: one seeded instance, no capacity
# provider and no /_standin/instances call behave exactly as before.
# --------------------------------------------------------------------------------------

# One lock for moto's backends, shared by the WSGI app and the scaling ticker thread.
BACKEND_LOCK = threading.RLock()
STANDIN_IMAGE_ID = "ami-12c6146b"  # as seed.py
NAME_TAG = "ecs-executor-local"
LOOPBACK_VPC = "127.0.0.0/16"
LOOPBACK_SUBNET = "127.0.0.0/24"
AZ_LETTERS = ("a", "b", "c")
# Stopped-task wording. "Host EC2 (instance i-…) terminated." with stopCode TerminationNotice
# is what ECS reports for tasks of an instance that went away (seen verbatim in public code
# that records real DescribeTasks output; Batch/Nextflow users see the same text on Spot
# reclaims). ECS has stopCode SpotInterruption too, with "Your Spot Task was interrupted.",
# but its docs show it for Fargate Spot; on EC2 a Spot reclaim is an instance termination.
HOST_TERMINATED = "Host EC2 (instance {instance_id}) terminated."
# ecs-at-scale.md §6 [S19e]: a task that waited for capacity in vain stops with
# stopCode TaskFailedToStart, e.g. "EMPTY CAPACITY PROVIDER" (a third-party write-up of
# the console text; configurable below).
PROVISIONING_TIMEOUT_REASON = "EMPTY CAPACITY PROVIDER"
# RunTask beyond the PROVISIONING-tasks-per-cluster quota returns ClientException [S20];
# the exact message is not in our sources: this wording is the stand-in's own.
PROVISIONING_QUOTA_MESSAGE = (
    "The maximum number of tasks in the PROVISIONING state for this cluster has been reached."
)


def host_arch() -> str:
    import platform

    machine = platform.machine().lower()
    return {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)


class SeqLog:
    """An append-only list of records numbered by `seq`, which never restarts (not even on
    clear), so a client's `since` cursor stays valid."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[dict[str, Any]] = []
        self._seq = 0

    def _append(self, **fields: Any) -> dict[str, Any]:
        """Numbers and keeps a record: seq first, then `fields`."""
        with self._lock:
            self._seq += 1
            item = {"seq": self._seq, **fields}
            self._items.append(item)
            return item

    def since(self, seq: int) -> tuple[list[dict[str, Any]], int]:
        with self._lock:
            return [dict(i) for i in self._items if i["seq"] > seq], self._seq

    def clear(self) -> None:
        with self._lock:
            self._items = []


class ScaleEvents(SeqLog):
    """What the simulated control plane did on its own (scale-out, registrations, Spot
    notices, terminations, scale-in), for the harness that brings up each instance's Docker
    listener and agent. seq never restarts, like the request recording."""

    def add(self, kind: str, **fields: Any) -> dict[str, Any]:
        item = self._append(type=kind, time=time.time(), **fields)
        log.info("scale event: %s", json.dumps(item))
        return item


class Scaling:
    """Settings of the simulated managed scaling (one set for all capacity providers), and
    the timer queue the ticker runs."""

    def defaults(self) -> dict[str, Any]:
        return {
            # ECS: ~1 min for the CapacityProviderReservation alarm, then EC2 boot and agent
            # registration (ecs-at-scale.md §6): minutes. Tests set a fraction of a second.
            "scale_out_delay_s": 60.0,
            # Time after a step's instances registered before the next step (None: the
            # capacity provider's instanceWarmupPeriod, ECS default 300 s).
            "warmup_s": None,
            # ECS: "between 10 and 30 minutes" (ecs-at-scale.md §6), not configurable there.
            "provisioning_timeout_s": 1800.0,
            "provisioning_timeout_reason": PROVISIONING_TIMEOUT_REASON,
            # ECS scale-in alarm: ~15 min below target.
            "scale_in_idle_s": 900.0,
            # The Auto Scaling group's size limits (instances of the provider).
            "min_size": 0,
            "max_size": 10,
            # RunTask answers ClientException beyond this many PROVISIONING tasks per cluster.
            "provisioning_quota": 500,
            # What a scale-out launches.
            "instance": {"cpu": 4096, "memory": 7482, "arch": host_arch(), "instance_type": "c5.xlarge"},
        }

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.config = self.defaults()
        self._timers: list[tuple[float, int, Any, str]] = []
        self._timer_seq = 0

    def reset(self) -> None:
        with self._lock:
            self.config = self.defaults()
            self._timers = []

    def configure(self, spec: dict[str, Any]) -> dict[str, Any]:
        new = dict(self.config)
        for key, value in spec.items():
            if key not in new:
                raise ValueError(f"unknown key: {key}")
            if key == "instance":
                if not isinstance(value, dict) or set(value) - {"cpu", "memory", "arch", "instance_type"}:
                    raise ValueError("instance: {cpu, memory, arch, instance_type}")
                new["instance"] = {**self.config["instance"], **value}
            elif key == "provisioning_timeout_reason":
                if not isinstance(value, str) or not value:
                    raise ValueError(f"{key} must be a non-empty string")
                new[key] = value
            elif key == "warmup_s" and value is None:
                new[key] = None
            else:
                if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                    raise ValueError(f"{key} must be a non-negative number")
                new[key] = int(value) if key in ("min_size", "max_size", "provisioning_quota") else float(value)
        with self._lock:
            self.config = new
        return self.state()

    def state(self) -> dict[str, Any]:
        with self._lock:
            pending = [{"in_s": round(due - time.monotonic(), 3), "what": what} for due, _, _, what in self._timers]
            return {**self.config, "instance": dict(self.config["instance"]), "timers": pending}

    def schedule(self, delay: float, fn: Any, what: str) -> None:
        with self._lock:
            self._timer_seq += 1
            self._timers.append((time.monotonic() + delay, self._timer_seq, fn, what))
            self._timers.sort(key=lambda t: (t[0], t[1]))

    def due(self, now: float) -> list[Any]:
        with self._lock:
            ready = [t for t in self._timers if t[0] <= now]
            self._timers = [t for t in self._timers if t[0] > now]
        return [t[2] for t in ready]


EVENTS = ScaleEvents()
SCALING = Scaling()
_BACKENDS: list[Backend] = []  # backends with instances or waiting tasks, for the ticker


def track_backend(backend: Backend) -> None:
    if not any(b is backend for b in _BACKENDS):
        _BACKENDS.append(backend)


def reset_scale_state() -> None:
    """/moto-api/reset: moto's backends are new, so are our settings, timers and events."""
    with BACKEND_LOCK:
        SCALING.reset()
        EVENTS.clear()
        _BACKENDS.clear()


def _ec2(backend: Backend) -> Any:
    from moto.ec2.models import ec2_backends

    return ec2_backends[backend.account_id][backend.region_name]


def _provider_of(backend: Backend, name: str | None) -> Any:
    if not name or name in ("FARGATE", "FARGATE_SPOT"):
        return None
    return backend._get_provider(name)


def _managed(cp: Any) -> bool:
    return (cp.auto_scaling_group_provider or {}).get("managedScaling", {}).get("status") == "ENABLED"


def _live_tasks(backend: Backend, cluster_name: str) -> list[Task]:
    return [t for t in backend.tasks.get(cluster_name, {}).values() if t.last_status != "STOPPED"]


def _tasks_on(backend: Backend, cluster_name: str, ci: Any) -> list[Task]:
    arn = ci.container_instance_arn
    return [t for t in _live_tasks(backend, cluster_name) if t.container_instance_arn == arn]


def _choose_provider(backend: Backend, cluster: Any, strategy: list[dict[str, Any]] | None) -> str | None:
    """A capacity provider strategy's pick for the next task: `base` tasks first, then in
    proportion to `weight` (counting this cluster's tasks that are not STOPPED)."""
    if not strategy:
        return None
    if len(strategy) == 1:
        return strategy[0].get("capacityProvider")
    counts: dict[str, int] = {}
    for t in _live_tasks(backend, cluster.name):
        counts[t.capacity_provider_name] = counts.get(t.capacity_provider_name, 0) + 1
    for item in strategy:
        if counts.get(item.get("capacityProvider"), 0) < int(item.get("base") or 0):
            return item.get("capacityProvider")
    weighted = [i for i in strategy if int(i.get("weight") or 0) > 0] or strategy[:1]
    return min(
        weighted, key=lambda i: counts.get(i.get("capacityProvider"), 0) / max(int(i.get("weight") or 0), 1e-9)
    ).get("capacityProvider")


# Cluster query language, the part placement constraints use here:
#   attribute:<name> (==|!=|=~|!~) <value> | attribute:<name> (in|not_in) [v1, v2]
#   attribute:<name> (exists|not_exists) | ec2InstanceId ... ; terms joined by and / or.
_TERM = re.compile(
    r"^\s*(attribute:[\w.\-:/]+|ec2InstanceId)\s+(==|!=|=~|!~|in|not_in|exists|not_exists)\s*(.*?)\s*$",
    re.IGNORECASE,
)


def parse_expression(text: str) -> list[list[tuple[str, str, list[str]]]]:
    text = text.strip()
    while text.startswith("(") and text.endswith(")"):
        text = text[1:-1].strip()
    if not text:
        raise InvalidParameterException("A memberOf placement constraint needs an expression.")
    alternatives = []
    for alt in re.split(r"\s+or\s+", text, flags=re.IGNORECASE):
        terms = []
        for term in re.split(r"\s+and\s+", alt, flags=re.IGNORECASE):
            m = _TERM.match(term.strip().strip("()"))
            if not m:
                raise InvalidParameterException(f"Invalid placement constraint expression: {text}")
            subject, op, raw = m.group(1), m.group(2).lower(), m.group(3)
            if op in ("in", "not_in"):
                values = [v.strip() for v in raw.strip("[]()").split(",") if v.strip()]
            elif op in ("exists", "not_exists"):
                values = []
            else:
                values = [raw]
            terms.append((subject, op, values))
        alternatives.append(terms)
    return alternatives


def _matches(ci: Any, parsed: list[list[tuple[str, str, list[str]]]]) -> bool:
    import fnmatch

    def value_of(subject: str) -> str | None:
        if subject.lower() == "ec2instanceid":
            return ci.ec2_instance_id
        return ci.attributes.get(subject.split(":", 1)[1])

    def term_ok(subject: str, op: str, values: list[str]) -> bool:
        v = value_of(subject)
        if op == "exists":
            return v is not None
        if op == "not_exists":
            return v is None
        if op == "==":
            return v == values[0]
        if op == "!=":
            return v != values[0]
        if op == "in":
            return v in values
        if op == "not_in":
            return v not in values
        hit = v is not None and fnmatch.fnmatchcase(v, values[0])
        return hit if op == "=~" else not hit

    return any(all(term_ok(*t) for t in alt) for alt in parsed)


def _constraint_misfit(backend: Backend, cluster_name: str, ci: Any, constraints: list[dict[str, Any]],
                       group: str) -> str | None:
    for c in constraints:
        kind = c.get("type")
        if kind == "distinctInstance":
            if any(t.group == group for t in _tasks_on(backend, cluster_name, ci)):
                return "DistinctInstance placement constraint unsatisfied."
        elif kind == "memberOf":
            if not _matches(ci, parse_expression(c.get("expression") or "")):
                return "MemberOf placement constraint unsatisfied."
    return None


def _remaining(ci: Any, name: str) -> int:
    return next(r["integerValue"] for r in ci.remaining_resources if r["name"] == name)


def _order(backend: Backend, cluster_name: str, instances: list[Any],
           strategies: list[dict[str, Any]] | None, group: str) -> list[Any]:
    """Candidate instances in placement order. No strategy: registration order (first fit;
    the stand-in's choice, ECS documents no default for standalone tasks in our sources).
    binpack (cpu|memory): least remaining first; spread (instanceId|host|attribute:x): fewest
    tasks of the same task group first (ECS: "standalone tasks are spread according to the
    tasks in the same task group"); random. Earlier strategies take precedence."""
    import random

    order = list(instances)
    same_group = [t for t in _live_tasks(backend, cluster_name) if t.group == group]
    for s in reversed(strategies or []):
        kind = (s.get("type") or "").lower()
        field = s.get("field") or ""
        if kind == "random":
            random.shuffle(order)
        elif kind == "binpack":
            res = "MEMORY" if field.lower() == "memory" else "CPU"
            order.sort(key=lambda ci: _remaining(ci, res))
        elif kind == "spread":
            if field.lower() in ("instanceid", "host", ""):
                per_instance: dict[str, int] = {}
                for t in same_group:
                    per_instance[t.container_instance_arn] = per_instance.get(t.container_instance_arn, 0) + 1
                order.sort(key=lambda ci: per_instance.get(ci.container_instance_arn, 0))
            else:
                attr = field.split(":", 1)[-1]
                per_value: dict[Any, int] = {}
                cis = backend.container_instances.get(cluster_name, {})
                for t in same_group:
                    host = cis.get((t.container_instance_arn or "").split("/")[-1])
                    if host is not None:
                        key = host.attributes.get(attr)
                        per_value[key] = per_value.get(key, 0) + 1
                order.sort(key=lambda ci: per_value.get(ci.attributes.get(attr), 0))
    return order


def _place(backend: Backend, cluster_name: str, instances: list[Any], req: dict[str, Any],
           constraints: list[dict[str, Any]], group: str,
           strategy: list[dict[str, Any]] | None) -> tuple[Any, dict[str, str]]:
    misfits: dict[str, str] = {}
    for ci in _order(backend, cluster_name, instances, strategy, group):
        why = _misfit(ci, req) or _constraint_misfit(backend, cluster_name, ci, constraints, group)
        if why:
            misfits[ci.container_instance_arn] = why
            continue
        return ci, misfits
    return None, misfits


def _stop_by_ecs(backend: Backend, task: Task, stop_code: str, reason: str) -> None:
    """ECS itself ends the task (no agent report): its instance went away, or it never got
    capacity. A StopTask's UserInitiated code and reason are kept."""
    if task.last_status == "STOPPED":
        return
    now = utcnow()
    task.desired_status = "STOPPED"
    if task.stop_code != "UserInitiated":
        task.stop_code = stop_code
        task.stopped_reason = reason
    task.stopping_at = task.stopping_at or now
    task.stopped_at = now
    task.execution_stopped_at = now
    task.last_status = "STOPPED"
    for c in task.containers:
        c.last_status = "STOPPED"
    _count_as(backend, task, None)
    task.version += 1


def _find_instance(backend: Backend, ref: str) -> Any:
    """A container instance of any cluster by id, ARN or EC2 instance id."""
    tail = ref.split("/")[-1]
    for cis in backend.container_instances.values():
        for ci in cis.values():
            if tail in (ci.id, ci.ec2_instance_id) or ref == ci.container_instance_arn:
                return ci
    return None


def instance_info(backend: Backend, ci: Any) -> dict[str, Any]:
    try:
        inst = _ec2(backend).get_instance(ci.ec2_instance_id)
    except Exception:  # noqa: BLE001 - gone from EC2
        inst = None
    reg = {r["name"]: r.get("integerValue") for r in ci.registered_resources}
    return {
        "cluster": ci.cluster_name,
        "container_instance_arn": ci.container_instance_arn,
        "container_instance_id": ci.id,
        "instance_id": ci.ec2_instance_id,
        "private_ip": getattr(inst, "private_ip", None),
        "public_ip": getattr(inst, "public_ip", None),
        "availability_zone": ci.attributes.get("ecs.availability-zone"),
        "cpu_architecture": ci.attributes.get("ecs.cpu-architecture"),
        "instance_type": ci.attributes.get("ecs.instance-type"),
        "cpu": reg.get("CPU"),
        "memory": reg.get("MEMORY"),
        "remaining_cpu": _remaining(ci, "CPU"),
        "remaining_memory": _remaining(ci, "MEMORY"),
        "status": ci.status,
        "agent_connected": ci.agent_connected,
        "capacity_provider": getattr(ci, "capacity_provider_name", None),
        "running_tasks": ci.running_tasks_count,
        "pending_tasks": ci.pending_tasks_count,
    }


def _used_addresses(ec2: Any) -> set[str]:
    used = set()
    for inst in ec2.all_instances():
        if inst._state.name != "terminated":
            used.update(a for a in (inst.private_ip, inst.public_ip) if a)
    used.update(eip.public_ip for eip in ec2.addresses)
    return used


def _next_address_pair(ec2: Any) -> tuple[str, str]:
    """Instance k has private 127.0.0.(2k-1) and public 127.0.0.(2k): the seeded one is
    .1/.2, the next .3/.4, and a freed pair is reused."""
    used = _used_addresses(ec2)
    for n in range(1, 128):
        pair = (f"127.0.0.{2 * n - 1}", f"127.0.0.{2 * n}")
        if not used & set(pair):
            return pair
    raise InvalidParameterException("No free loopback address pair left in 127.0.0.0/24.")


def _loopback_subnet(ec2: Any) -> Any:
    found = ec2.describe_subnets(filters={"cidr-block": [LOOPBACK_SUBNET]})
    if found:
        return found[0]
    vpcs = ec2.describe_vpcs(filters={"cidr-block": [LOOPBACK_VPC]}) if hasattr(ec2, "describe_vpcs") else []
    vpc = vpcs[0] if vpcs else ec2.create_vpc(LOOPBACK_VPC)
    return ec2.create_subnet(vpc.id, LOOPBACK_SUBNET)


def launch_instance(backend: Backend, cluster_name: str, spec: dict[str, Any]) -> Any:
    """An EC2 instance on the next free loopback pair (or the given one), with an Elastic IP
    as its public address, registered as a container instance of the cluster. Idempotent per
    private_ip: an instance already registered with that address is returned."""
    cluster = backend._get_cluster(cluster_name)
    ec2 = _ec2(backend)
    private_ip, public_ip = spec.get("private_ip"), spec.get("public_ip")
    if bool(private_ip) != bool(public_ip):
        raise InvalidParameterException("Give both private_ip and public_ip, or neither.")
    if private_ip:
        for ci in backend.container_instances.get(cluster.name, {}).values():
            if ci.status != "INACTIVE" and instance_info(backend, ci)["private_ip"] == private_ip:
                return ci
        if _used_addresses(ec2) & {private_ip, public_ip}:
            raise InvalidParameterException(f"Address {private_ip} or {public_ip} is in use.")
    else:
        private_ip, public_ip = _next_address_pair(ec2)
    subnet = _loopback_subnet(ec2)
    az = spec.get("availability_zone")
    if not az:
        # Spread over the Region's first zones, as an ASG balances its zones.
        zones = [f"{backend.region_name}{x}" for x in AZ_LETTERS]
        per_zone = {z: 0 for z in zones}
        for ci in backend.container_instances.get(cluster.name, {}).values():
            if ci.status != "INACTIVE":
                zone = ci.attributes.get("ecs.availability-zone")
                per_zone[zone] = per_zone.get(zone, 0) + 1
        az = min(zones, key=lambda z: per_zone[z])
    reservation = ec2.run_instances(
        STANDIN_IMAGE_ID, 1, None, [],
        # The kwargs moto's RunInstances handler passes (its backend reads several unguarded).
        instance_type=spec.get("instance_type") or "c5.xlarge", is_instance_type_default=False,
        placement=None, placement_hostid=None, region_name=backend.region_name,
        subnet_id=subnet.id, key_name=None, security_group_ids=[], nics=[], private_ip=private_ip,
        associate_public_ip=None, tags={"instance": {"Name": NAME_TAG}}, ebs_optimized=False,
        disable_api_stop=False, instance_market_options={}, instance_initiated_shutdown_behavior=None,
        launch_template={}, hibernation_options={}, monitoring_state="disabled",
        ipv6_address_count=None, metadata_options={"HttpTokens": "required", "HttpPutResponseHopLimit": 1, "HttpEndpoint": "enabled"}, client_token=str(uuid.uuid4()),
    )
    inst = reservation.instances[0]
    inst._placement.zone = az  # ECS reads ecs.availability-zone from the instance
    ec2.allocate_address("vpc", address=public_ip)
    ec2.associate_address(instance=inst, address=public_ip)
    resources = [{"name": "CPU", "integerValue": int(spec.get("cpu") or 4096)},
                 {"name": "MEMORY", "integerValue": int(spec.get("memory") or 7482)}]
    attributes = [{"name": "ecs.cpu-architecture", "value": spec.get("arch") or host_arch()}]
    attributes += [{"name": k, "value": v} for k, v in (spec.get("attributes") or {}).items()]
    return backend.register_container_instance(
        cluster.name, inst.id, resources, attributes, spec.get("capacity_provider"))


def terminate_instance(backend: Backend, ci: Any, stop_code: str = "TerminationNotice",
                       reason: str | None = None, event: str = "instance-terminated",
                       cause: str = "terminated") -> None:
    """The EC2 instance is gone: ECS stops its tasks, the container instance is INACTIVE
    (still in DescribeContainerInstances, not in ListContainerInstances), the addresses are free."""
    if ci.status == "INACTIVE":
        return
    info = instance_info(backend, ci)
    reason = reason or HOST_TERMINATED.format(instance_id=ci.ec2_instance_id)
    stopped = []
    for task in _tasks_on(backend, ci.cluster_name, ci):
        _stop_by_ecs(backend, task, stop_code, reason)
        stopped.append(task.task_arn)
    ci.status = "INACTIVE"
    ci.agent_connected = False
    cluster = backend.clusters.get(ci.cluster_name)
    if cluster is not None:
        cluster.registered_container_instances_count -= 1
    ec2 = _ec2(backend)
    try:
        ec2.terminate_instances([ci.ec2_instance_id])
        inst = ec2.get_instance(ci.ec2_instance_id)
        if inst.subnet_id and info["private_ip"]:
            # moto keeps a terminated instance's address taken; EC2 frees it.
            ec2.get_subnet(inst.subnet_id).del_subnet_ip(info["private_ip"])
    except Exception:  # noqa: BLE001 - already gone
        log.exception("terminating %s", ci.ec2_instance_id)
    for eip in list(ec2.addresses):
        if info["public_ip"] and eip.public_ip == info["public_ip"]:
            ec2.release_address(address=eip.public_ip)
    EVENTS.add(event, cause=cause, stopped_tasks=stopped, stop_code=stop_code, stopped_reason=reason,
               **{**info, "status": "INACTIVE"})


def instance_control(backend: Backend, ci: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """POST /_standin/instances/<id>: {"state": "DRAINING"|"ACTIVE", "terminate_after_s"},
    {"lost": "spot"|"terminated", "notice_s", "stop_code", "reason"}."""
    if ci.status == "INACTIVE":
        raise InvalidParameterException("The container instance is INACTIVE.")
    unknown = set(spec) - {"state", "terminate_after_s", "lost", "notice_s", "stop_code", "reason"}
    if unknown:
        raise ValueError(f"unknown keys: {sorted(unknown)}")
    code = spec.get("stop_code") or "TerminationNotice"
    reason = spec.get("reason")
    if "lost" in spec:
        lost = spec["lost"]
        if lost not in ("spot", "terminated"):
            raise ValueError('lost must be "spot" or "terminated"')
        notice = float(spec.get("notice_s", 120.0 if lost == "spot" else 0.0))
        if lost == "spot":
            # EC2 sends a two-minute interruption notice; with ECS_ENABLE_SPOT_INSTANCE_DRAINING
            # the agent sets the instance DRAINING at once (no new tasks; standalone tasks go
            # on until the instance dies).
            ci.status = "DRAINING"
            EVENTS.add("spot-interruption-notice", terminate_in_s=notice, **instance_info(backend, ci))
        if notice > 0:
            SCALING.schedule(notice, lambda: terminate_instance(backend, ci, code, reason, cause=lost),
                             f"terminate {ci.ec2_instance_id} ({lost})")
        else:
            terminate_instance(backend, ci, code, reason, cause=lost)
    elif "state" in spec:
        state = spec["state"]
        if state not in ("DRAINING", "ACTIVE"):
            raise ValueError('state must be "DRAINING" or "ACTIVE"')
        # As UpdateContainerInstancesState: DRAINING places no new tasks there; tasks that
        # are not part of a service (all of ours) are NOT stopped by ECS.
        ci.status = state
        EVENTS.add("draining" if state == "DRAINING" else "active", **instance_info(backend, ci))
        after = spec.get("terminate_after_s")
        if after is not None:
            SCALING.schedule(float(after), lambda: terminate_instance(backend, ci, code, reason, cause="draining"),
                             f"terminate {ci.ec2_instance_id} (drained)")
    else:
        raise ValueError('give "state" or "lost"')
    return instance_info(backend, ci)


def _instances_needed(tasks: list[Task], template: dict[str, Any]) -> int:
    """How many template-sized instances the waiting tasks need (first fit); tasks larger
    than an instance never fit and ask for none (they wait until the timeout, as in ECS)."""
    bins: list[list[int]] = []
    for t in tasks:
        cpu, mem = t.resource_requirements["CPU"], t.resource_requirements["MEMORY"]
        if cpu > template["cpu"] or mem > template["memory"]:
            continue
        for b in bins:
            if b[0] >= cpu and b[1] >= mem:
                b[0] -= cpu
                b[1] -= mem
                break
        else:
            bins.append([template["cpu"] - cpu, template["memory"] - mem])
    return len(bins)


def _maybe_scale_out(backend: Backend, cluster_name: str, cp: Any, waiting: list[Task], now: float) -> None:
    steps = backend.__dict__.setdefault("_standin_scale", {})
    st = steps.setdefault((cluster_name, cp.name), {"in_flight": 0, "next_step_at": 0.0})
    if st["in_flight"] or now < st["next_step_at"]:
        return
    cfg = SCALING.config
    template = cfg["instance"]
    needed = _instances_needed(waiting, template)
    if needed == 0:
        return
    ms = cp.auto_scaling_group_provider["managedScaling"]
    current = sum(1 for ci in backend.container_instances.get(cluster_name, {}).values()
                  if ci.status != "INACTIVE" and getattr(ci, "capacity_provider_name", None) == cp.name)
    n = min(max(needed, int(ms.get("minimumScalingStepSize") or 1)),
            int(ms.get("maximumScalingStepSize") or 10000), cfg["max_size"] - current)
    if n <= 0:
        return
    st["in_flight"] = n
    delay = cfg["scale_out_delay_s"]
    EVENTS.add("scale-out", cluster=cluster_name, capacity_provider=cp.name, count=n,
               delay_s=delay, waiting_tasks=len(waiting))

    def arrive() -> None:
        try:
            for _ in range(n):
                ci = launch_instance(backend, cluster_name, {**template, "capacity_provider": cp.name})
                ci._standin_launched = True
                EVENTS.add("instance-registered", cause="scale-out", **instance_info(backend, ci))
        finally:
            st["in_flight"] = 0
            warm = cfg["warmup_s"] if cfg["warmup_s"] is not None else ms.get("instanceWarmupPeriod", 300)
            st["next_step_at"] = time.monotonic() + float(warm)

    SCALING.schedule(delay, arrive, f"scale-out {cp.name} +{n}")


def _tick_backend(backend: Backend, now: float) -> None:
    if not backend.capacity_providers:
        return  # nothing to place, scale out or scale in (timers run without this)
    cfg = SCALING.config
    queue = backend.__dict__.setdefault("_standin_provisioning", [])
    queue[:] = [t for t in queue if t.last_status == "PROVISIONING"]  # in arrival order
    for cluster_name in list(backend.clusters):
        waiting_by_cp: dict[str, list[Task]] = {}
        for t in [t for t in queue if t.cluster_name == cluster_name]:
            if now - t._standin_provisioning_since > cfg["provisioning_timeout_s"]:
                _stop_by_ecs(backend, t, "TaskFailedToStart", cfg["provisioning_timeout_reason"])
                EVENTS.add("provisioning-timeout", cluster=cluster_name, task_arn=t.task_arn,
                           capacity_provider=t.capacity_provider_name)
                continue
            cp = _provider_of(backend, t.capacity_provider_name)
            if cp is None:
                continue
            instances = [ci for ci in backend.container_instances.get(cluster_name, {}).values()
                         if ci.status == "ACTIVE" and getattr(ci, "capacity_provider_name", None) == cp.name]
            ci, _ = _place(backend, cluster_name, instances, t.resource_requirements,
                           getattr(t, "_standin_constraints", []), t.group, None)
            if ci is not None:
                t.container_instance_arn = ci.container_instance_arn
                t.last_status = "PENDING"
                _reserve(ci, t.resource_requirements, +1)
                _count_as(backend, t, "PENDING")
                t.version += 1
                continue
            waiting_by_cp.setdefault(cp.name, []).append(t)
        for cp_name, waiting in waiting_by_cp.items():
            cp = _provider_of(backend, cp_name)
            if cp is not None and _managed(cp):
                _maybe_scale_out(backend, cluster_name, cp, waiting, now)
        # Scale-in: instances of a managed provider that have been idle long enough, while
        # nothing waits for that provider, down to min_size. ECS drains, then the ASG terminates.
        by_cp: dict[str, list[Any]] = {}
        for ci in backend.container_instances.get(cluster_name, {}).values():
            if ci.status == "INACTIVE":
                continue
            if ci.running_tasks_count + ci.pending_tasks_count > 0:
                ci._standin_busy_at = now
            name = getattr(ci, "capacity_provider_name", None)
            if name:
                by_cp.setdefault(name, []).append(ci)
        for cp_name, cis in by_cp.items():
            cp = _provider_of(backend, cp_name)
            if cp is None or not _managed(cp) or waiting_by_cp.get(cp_name):
                continue
            idle = sorted(
                (ci for ci in cis if ci.status == "ACTIVE" and ci.running_tasks_count + ci.pending_tasks_count == 0
                 and now - ci._standin_busy_at > cfg["scale_in_idle_s"]),
                key=lambda ci: ci._standin_busy_at,
            )
            for ci in idle[: max(0, len(cis) - cfg["min_size"])]:
                ci.status = "DRAINING"
                terminate_instance(backend, ci, event="scale-in", cause="scale-in")


def scale_tick() -> None:
    now = time.monotonic()
    with BACKEND_LOCK:
        for fn in SCALING.due(now):
            try:
                fn()
            except Exception:  # noqa: BLE001 - keep ticking
                log.exception("scheduled scale action failed")
        for backend in list(_BACKENDS):
            try:
                _tick_backend(backend, now)
            except Exception:  # noqa: BLE001
                log.exception("scale tick failed")


def start_scale_ticker(interval: float = 0.1) -> threading.Thread:
    def loop() -> None:
        while True:
            time.sleep(interval)
            scale_tick()

    thread = threading.Thread(target=loop, name="standin-scale", daemon=True)
    thread.start()
    return thread


def _ecs_backend(query: dict[str, list[str]]) -> Backend:
    from moto.core import DEFAULT_ACCOUNT_ID

    region = (query.get("region") or [os.environ.get("AWS_DEFAULT_REGION", "us-east-1")])[0]
    return ecs_models.ecs_backends[DEFAULT_ACCOUNT_ID][region]


def scale_control(method: str, parts: list[str], query: dict[str, list[str]],
                  environ: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes] | None:
    """/_standin/scaling, /_standin/scale-events, /_standin/instances[/<id>]; None: not ours."""
    if not parts or parts[0] not in ("scaling", "scale-events", "instances"):
        return None

    try:
        if parts == ["scaling"] and method == "GET":
            return _json(200, SCALING.state())
        if parts == ["scaling"] and method == "POST":
            return _json(200, SCALING.configure(_json_object_body(environ)))
        if parts == ["scale-events"] and method == "GET":
            since = int((query.get("since") or ["0"])[0])
            items, last = EVENTS.since(since)
            return _json(200, {"events": items, "next": last})
        with BACKEND_LOCK:
            backend = _ecs_backend(query)
            if parts == ["instances"] and method == "GET":
                cluster = (query.get("cluster") or [None])[0]
                return _json(200, {"instances": [
                    instance_info(backend, ci)
                    for name, cis in backend.container_instances.items() if cluster in (None, name)
                    for ci in cis.values()
                ]})
            if parts == ["instances"] and method == "POST":
                spec = _json_object_body(environ)
                unknown = set(spec) - {"cluster", "cpu", "memory", "arch", "availability_zone", "instance_type",
                                       "capacity_provider", "private_ip", "public_ip", "attributes"}
                if unknown:
                    raise ValueError(f"unknown keys: {sorted(unknown)}")
                before = {id(ci) for cis in backend.container_instances.values() for ci in cis.values()}
                ci = launch_instance(backend, spec.get("cluster") or "local", spec)
                info = instance_info(backend, ci)
                if id(ci) not in before:
                    EVENTS.add("instance-registered", cause="api", **info)
                return _json(200, info)
            if len(parts) == 2 and parts[0] == "instances":
                ci = _find_instance(backend, parts[1])
                if ci is None:
                    return _json(404, {"error": f"no container instance {parts[1]}"})
                if method == "GET":
                    return _json(200, instance_info(backend, ci))
                if method == "POST":
                    return _json(200, instance_control(backend, ci, _json_object_body(environ)))
    except (ValueError, TypeError) as exc:
        return _json(400, {"error": str(exc)})
    except ServiceException as exc:
        return _json(400, {"error": exc.message, "code": exc.code})
    except Exception as exc:  # noqa: BLE001 - a stand-in bug: say what it was
        traceback.print_exc()
        return _json(500, {"error": f"{type(exc).__name__}: {exc}"})
    return _json(404, {"error": f"no such endpoint: {method} /_standin/{'/'.join(parts)}"})


# --------------------------------------------------------------------------------------
# Response handlers (moto dispatches X-Amz-Target "...V20141113.RunTask" to run_task)
# --------------------------------------------------------------------------------------

Response = ecs_responses.EC2ContainerServiceResponse


def _resp_run_task(self: Any) -> ActionResult:
    tasks, failures = self.ecs_backend.standin_run_task(
        self._get_param("cluster", "default"),
        self._get_param("taskDefinition"),
        self._get_int_param("count", 1),
        self._get_param("overrides"),
        self._get_param("startedBy"),
        self._get_param("tags"),
        self._get_param("launchType"),
        self._get_param("networkConfiguration"),
        self._get_param("group"),
        self._get_param("platformVersion"),
        self._get_param("capacityProviderStrategy"),
        self._get_param("clientToken"),
        self._get_param("placementConstraints"),
        self._get_param("placementStrategy"),
    )
    return ActionResult({"tasks": tasks, "failures": failures})


def _resp_describe_tasks(self: Any) -> ActionResult:
    tasks, failures = self.ecs_backend.standin_describe_tasks(
        self._get_param("cluster", "default"), self._get_param("tasks", [])
    )
    if "TAGS" in (self._get_param("include") or []):
        self._include_in_response(ecs_responses.DESCRIBE_TASKS_TAGS)
    else:
        self._exclude_from_response(ecs_responses.DESCRIBE_TASKS_TAGS)
    return ActionResult({"tasks": tasks, "failures": failures})


def _resp_list_tasks(self: Any) -> ActionResult:
    tasks = self.ecs_backend.list_tasks(
        self._get_param("cluster", "default"),
        self._get_param("containerInstance"),
        self._get_param("family"),
        self._get_param("startedBy"),
        self._get_param("serviceName"),
        self._get_param("desiredStatus") or "RUNNING",  # the ECS default
    )
    return ActionResult({"taskArns": [t.task_arn for t in tasks]})


def _resp_list_container_instances(self: Any) -> ActionResult:
    """moto ignored `filter`: ECS applies it (cluster query language, as memberOf), e.g.
    `attribute:ecs.cpu-architecture == arm64`."""
    cluster_str = self._get_param("cluster", "default")
    arns = self.ecs_backend.list_container_instances(cluster_str, self._get_param("status"))
    text = self._get_param("filter")
    if text:
        parsed = parse_expression(text)
        cluster = self.ecs_backend._get_cluster(cluster_str)
        by_arn = {ci.container_instance_arn: ci
                  for ci in self.ecs_backend.container_instances.get(cluster.name, {}).values()}
        arns = [a for a in arns if a in by_arn and _matches(by_arn[a], parsed)]
    return ActionResult({"containerInstanceArns": arns})


def _resp_submit_task_state_change(self: Any) -> ActionResult:
    ack = self.ecs_backend.submit_task_state_change(
        self._get_param("cluster", "default"),
        self._get_param("task"),
        self._get_param("status"),
        self._get_param("reason"),
        self._get_param("containers"),
        self._get_param("pullStartedAt"),
        self._get_param("pullStoppedAt"),
        self._get_param("executionStoppedAt"),
    )
    return ActionResult({"acknowledgment": ack})


def _resp_submit_container_state_change(self: Any) -> ActionResult:
    change = {
        k: self._get_param(k)
        for k in ("containerName", "runtimeId", "status", "exitCode", "reason", "networkBindings")
    }
    ack = self.ecs_backend.submit_container_state_change(
        self._get_param("cluster", "default"), self._get_param("task"), change
    )
    return ActionResult({"acknowledgment": ack})


def _resp_register_container_instance(self: Any) -> ActionResult:
    doc = json.loads(self._get_param("instanceIdentityDocument"))
    ci = self.ecs_backend.register_container_instance(
        self._get_param("cluster", "default"), doc["instanceId"],
        self._get_param("totalResources"), self._get_param("attributes"),
    )
    return ActionResult({"containerInstance": ci})


Response.register_container_instance = _resp_register_container_instance  # type: ignore[method-assign]
Response.run_task = _resp_run_task  # type: ignore[method-assign]
Response.describe_tasks = _resp_describe_tasks  # type: ignore[method-assign]
Response.list_tasks = _resp_list_tasks  # type: ignore[method-assign]
Response.list_container_instances = _resp_list_container_instances  # type: ignore[method-assign]
Response.submit_task_state_change = _resp_submit_task_state_change  # type: ignore[attr-defined]
Response.submit_container_state_change = _resp_submit_container_state_change  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------
# Fault injection and request recording (WSGI middleware around moto's app)
# --------------------------------------------------------------------------------------

TARGET_PREFIX_SERVICE = {"AmazonEC2ContainerServiceV20141113": "ecs"}
QUERY_VERSION_SERVICE = {"2016-11-15": "ec2"}


def default_status(service: str, error: str) -> int:
    """HTTP status AWS uses for an error code when the fault does not say."""
    if error in ("ServerException", "InternalError", "InternalFailure", "InternalServerError"):
        return 500
    if error in ("RequestLimitExceeded", "Unavailable", "ServiceUnavailable", "ServiceUnavailableException"):
        return 503
    return 400


def aws_error(protocol: str, error: str, message: str, status: int,
              error_type_header: str | None = None) -> tuple[int, list[tuple[str, str]], bytes]:
    """An error the AWS SDKs parse like a real one. JSON protocol (ECS): the SDK takes the
    code from x-amzn-ErrorType (`error_type_header`, else `error`; then __type), so
    ThrottlingException is classified as throttling. EC2 query protocol:
    <Response><Errors><Error>... with <RequestID>."""
    request_id = str(uuid.uuid4())
    if protocol == "json":
        body = json.dumps({"__type": error, "message": message}).encode()
        headers = [
            ("Content-Type", "application/x-amz-json-1.1"),
            ("x-amzn-ErrorType", error_type_header or error),
            ("x-amzn-RequestId", request_id),
        ]
    else:
        from xml.sax.saxutils import escape

        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Response><Errors><Error><Code>{escape(error)}</Code>"
            f"<Message>{escape(message)}</Message></Error></Errors>"
            f"<RequestID>{request_id}</RequestID></Response>"
        ).encode()
        headers = [("Content-Type", "text/xml;charset=UTF-8"), ("x-amzn-RequestId", request_id)]
    headers.append(("Content-Length", str(len(body))))
    return status, headers, body


# moto's IAM enforcement (INITIAL_NO_AUTH_ACTION_COUNT, /moto-api/reset-auth) answers every
# service with one XML <ErrorResponse> (AccessDenied, InvalidClientTokenId, ...), which the ECS
# SDKs cannot parse (JSON protocol) and which is not EC2's <Response> shape or codes. What AWS
# sends instead, per service: code, HTTP status, and a message in AWS's words.
AUTH_ERRORS = {
    ("ecs", "AccessDenied"): ("AccessDeniedException", 400),
    ("ecs", "InvalidClientTokenId"): ("UnrecognizedClientException", 400),
    ("ecs", "SignatureDoesNotMatch"): ("InvalidSignatureException", 400),
    ("ec2", "AccessDenied"): ("UnauthorizedOperation", 403),
    ("ec2", "InvalidClientTokenId"): ("AuthFailure", 401),
    ("ec2", "SignatureDoesNotMatch"): ("AuthFailure", 401),
    # Secrets Manager speaks JSON 1.1 as ECS does, with the same codes.
    ("secretsmanager", "AccessDenied"): ("AccessDeniedException", 400),
    ("secretsmanager", "InvalidClientTokenId"): ("UnrecognizedClientException", 400),
    ("secretsmanager", "SignatureDoesNotMatch"): ("InvalidSignatureException", 400),
}


def auth_error_in_protocol(service: str, action: str | None, protocol: str, status: int,
                           headers: list[tuple[str, str]], body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """moto's IAM refusal of an ECS, EC2 or Secrets Manager call, answered as that service
    answers it: ECS (and Secrets Manager) JSON
    `AccessDeniedException` ("User: ... is not authorized to perform: ecs:RunTask because no
    identity-based policy allows the ecs:RunTask action"), EC2 XML `UnauthorizedOperation`
    ("You are not authorized to perform this operation. User: ..."). Anything else unchanged."""
    m = re.search(rb"<Code>([^<]+)</Code>\s*<Message>([^<]*)</Message>", body)
    if not m or service not in ("ecs", "ec2", "secretsmanager"):
        return status, headers, body
    from xml.sax.saxutils import unescape

    code, message = m.group(1).decode(), unescape(m.group(2).decode())
    mapped = AUTH_ERRORS.get((service, code))
    if mapped is None:
        return status, headers, body
    error, new_status = mapped
    denied = re.search(r"is not authorized to perform: (\S+)", message)
    if denied:
        message = f"{message} because no identity-based policy allows the {denied.group(1)} action"
    if error == "UnauthorizedOperation":
        message = f"You are not authorized to perform this operation. {message}"
    log.info("%s %s: IAM refused it (%s -> %s)", service, action, code, error)
    return aws_error(protocol, error, message, new_status)


def throttle_error(service: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """The answer to a throttled call (standin_throttle.py): ECS JSON (400) or EC2 XML (503)."""
    if service == "ecs":
        return aws_error("json", ECS_THROTTLE_TYPE, ECS_THROTTLE_MESSAGE, 400, ECS_THROTTLE_HEADER)
    return aws_error("query", EC2_THROTTLE_CODE, EC2_THROTTLE_MESSAGE, 503)


class Faults:
    """Rules that make the next N matching calls fail and/or wait. The first live rule
    that matches (service, action, body substring) takes the call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[dict[str, Any]] = []
        self._next_id = 1

    def add(self, spec: dict[str, Any]) -> dict[str, Any]:
        count = spec.get("count", 1)
        if not isinstance(count, int) or isinstance(count, bool):
            raise ValueError("count must be an integer (negative = unlimited)")
        delay = spec.get("delay_ms", 0) or 0
        if not isinstance(delay, (int, float)) or delay < 0:
            raise ValueError("delay_ms must be a non-negative number")
        error = spec.get("error")
        service = (spec.get("service") or "").lower() or None
        if not error and not delay:
            raise ValueError("a fault needs an error or a delay_ms")
        with self._lock:
            rule = {
                "id": f"fault-{self._next_id}",
                "service": service,
                "action": spec.get("action"),
                "match": spec.get("match"),
                "error": error,
                "status": int(spec["status"]) if spec.get("status") else (
                    default_status(service or "", error) if error else None
                ),
                "message": spec.get("message") or (error or ""),
                "delay_ms": delay,
                "count": count,
                "remaining": count,  # < 0: unlimited
                "hits": 0,
            }
            self._next_id += 1
            self._rules.append(rule)
            return dict(rule)

    def take(self, service: str, action: str | None, body: str) -> dict[str, Any] | None:
        with self._lock:
            for rule in self._rules:
                if rule["remaining"] == 0:
                    continue
                if rule["service"] and rule["service"] != service:
                    continue
                if rule["action"] and rule["action"] not in ("*", action):
                    continue
                if rule["match"] and rule["match"] not in body:
                    continue
                if rule["remaining"] > 0:
                    rule["remaining"] -= 1
                rule["hits"] += 1
                return dict(rule)
        return None

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._rules]

    def clear(self, fault_id: str | None = None) -> int:
        with self._lock:
            before = len(self._rules)
            self._rules = [r for r in self._rules if fault_id is not None and r["id"] != fault_id]
            return before - len(self._rules)


class Recorder(SeqLog):
    """Every AWS API call, in arrival order. seq never restarts (not even on clear or
    reset), so a client's `since` cursor stays valid."""

    def add(self, service: str, action: str | None, body: str, region: str | None,
            user_agent: str = "") -> dict[str, Any]:
        # user_agent tells the executor's calls (SDK app name "ecs-executor") from the agent's.
        return self._append(
            service=service, action=action, body=body, time=time.time(), region=region,
            status=None, user_agent=user_agent,
        )


def _json_object_body(environ: dict[str, Any]) -> dict[str, Any]:
    """The request body as a JSON object ({} when empty); ValueError when it is not one."""
    spec = json.loads(_read_body(environ) or b"{}")
    if not isinstance(spec, dict):
        raise ValueError("body must be a JSON object")
    return spec


def _read_body(environ: dict[str, Any]) -> bytes:
    """Read the whole request body and put it back for moto."""
    stream = environ.get("wsgi.input")
    length = environ.get("CONTENT_LENGTH")
    if stream is None:
        return b""
    if length:
        body = stream.read(int(length))
    elif environ.get("wsgi.input_terminated"):
        body = stream.read()
    else:
        body = b""
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    return body


def identify(environ: dict[str, Any], body: bytes) -> tuple[str | None, str | None, str | None, str, str]:
    """(service, action, region, protocol, body text) of an AWS API request."""
    text = body.decode("utf-8", errors="replace")
    if environ.get("HTTP_CONTENT_ENCODING", "").lower() == "gzip":
        try:
            text = gzip.decompress(body).decode("utf-8", errors="replace")
        except OSError:
            pass
    service = region = action = None
    m = re.search(r"Credential=[^/]+/\d+/([^/]+)/([^/]+)/", environ.get("HTTP_AUTHORIZATION", ""))
    if m:
        region, service = m.group(1), m.group(2)
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:
        prefix, _, action = target.rpartition(".")
        service = service or TARGET_PREFIX_SERVICE.get(prefix, prefix or None)
        return service, action, region, "json", text
    if "x-www-form-urlencoded" in environ.get("CONTENT_TYPE", "") or environ.get("QUERY_STRING"):
        form = parse_qs(text) if text else parse_qs(environ.get("QUERY_STRING", ""))
        action = (form.get("Action") or [None])[0]
        version = (form.get("Version") or [None])[0]
        service = service or QUERY_VERSION_SERVICE.get(version or "")
    return service, action, region, "query", text


class StandinApp:
    """moto's app plus /_standin/* control endpoints, fault injection and recording.
    One lock serializes calls into moto: its backends are plain dicts and lists and were
    not written for concurrent requests (two RunTasks could both take the last MiB).
    Fault delays are slept outside the lock, so a delayed call does not stall others."""

    def __init__(self, moto_app: Any) -> None:
        self.moto_app = moto_app
        self.faults = Faults()
        self.recorder = Recorder()
        self.throttle = Throttle()
        self.backend_lock = BACKEND_LOCK

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if path == "/_standin" or path.startswith("/_standin/"):
            status, headers, body = self.control(method, path, environ)
        elif path.startswith("/moto-api"):
            status, headers, body = self.call_moto(environ, "json")
            if path.rstrip("/") == "/moto-api/reset" and method == "POST" and status == 200:
                self.faults.clear()
                self.recorder.clear()
                self.throttle.reset()
                reset_scale_state()
        else:
            status, headers, body = self.aws_call(environ)
        start_response(f"{status} {_reason(status)}", headers)
        return [body]

    def aws_call(self, environ: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
        started = time.monotonic()
        raw = _read_body(environ)
        service, action, region, protocol, text = identify(environ, raw)
        if service is None:
            return self.call_moto(environ, protocol)
        user_agent = environ.get("HTTP_X_AMZ_USER_AGENT") or environ.get("HTTP_USER_AGENT") or ""
        item = self.recorder.add(service, action, text, region, user_agent)
        throttled = self.throttle.check(service, action, text, user_agent)
        if throttled:
            # Like ECS: the bucket is empty, the call never reaches the service (no fault
            # rule is used up either).
            item["throttled"] = throttled
            status, headers, body = throttle_error(service)
            item["status"] = status
            log.info("%s %s -> %s [throttled: %s]", service, action, status, throttled)
            return status, headers, body
        fault = self.faults.take(service, action, text)
        if fault:
            item["fault"] = fault["id"]
            if fault["delay_ms"]:
                time.sleep(fault["delay_ms"] / 1000.0)
        if fault and fault["error"]:
            status, headers, body = aws_error(protocol, fault["error"], fault["message"], fault["status"])
        else:
            status, headers, body = self.call_moto(environ, protocol)
            if status in (401, 403):
                status, headers, body = auth_error_in_protocol(service, action, protocol, status, headers, body)
        item["status"] = status
        log.info(
            "%s %s -> %s%s (%.0f ms)", service, action, status,
            f" [{fault['id']}]" if fault else "", (time.monotonic() - started) * 1000,
        )
        return status, headers, body

    def call_moto(self, environ: dict[str, Any], protocol: str) -> tuple[int, list[tuple[str, str]], bytes]:
        captured: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            captured["status"] = int(status.split()[0])
            captured["headers"] = headers
            return lambda data: None

        try:
            with self.backend_lock:
                result = self.moto_app(environ, start_response)
                try:
                    body = b"".join(result)
                finally:
                    if hasattr(result, "close"):
                        result.close()
        except Exception as exc:  # moto bug or unimplemented action: answer like AWS's 500
            traceback.print_exc()
            code = "ServerException" if protocol == "json" else "InternalError"
            return aws_error(protocol, code, f"{type(exc).__name__}: {exc}", 500)
        status = captured["status"]
        # moto leaks its internal "status" header; Content-Length is recomputed below.
        headers = [(k, v) for k, v in captured["headers"] if k.lower() not in ("content-length", "status")]
        if protocol == "json" and status >= 400:
            body = _tidy_json_error(body)
        headers.append(("Content-Length", str(len(body))))
        return status, headers, body

    def control(self, method: str, path: str, environ: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
        query = parse_qs(environ.get("QUERY_STRING", ""))
        try:
            since = int((query.get("since") or ["0"])[0])
        except ValueError:
            return _json(400, {"error": "since must be an integer"})
        parts = [p for p in path.split("/") if p][1:]  # drop "_standin"
        if parts == ["health"] and method == "GET":
            return _json(200, {"ok": True})
        if parts == ["faults"]:
            if method == "POST":
                try:
                    rule = self.faults.add(_json_object_body(environ))
                except ValueError as exc:
                    return _json(400, {"error": str(exc)})
                log.info("fault added: %s", json.dumps(rule))
                return _json(200, {"id": rule["id"]})
            if method == "GET":
                return _json(200, self.faults.list())
            if method == "DELETE":
                return _json(200, {"deleted": self.faults.clear()})
        if len(parts) == 2 and parts[0] == "faults" and method == "DELETE":
            n = self.faults.clear(parts[1])
            return _json(200 if n else 404, {"deleted": n})
        if parts == ["requests"]:
            if method == "GET":
                items, last = self.recorder.since(since)
                return _json(200, {"requests": items, "next": last})
            if method == "DELETE":
                self.recorder.clear()
                return _json(200, {"cleared": True})
        if parts == ["throttling"]:
            if method == "GET":
                return _json(200, self.throttle.state())
            if method == "POST":
                try:
                    state = self.throttle.configure(_json_object_body(environ))
                except ValueError as exc:
                    return _json(400, {"error": str(exc)})
                log.info("throttling: enabled=%s scale=%s", state["enabled"], state["scale"])
                return _json(200, state)
        scale = scale_control(method, parts, query, environ)
        if scale is not None:
            return scale
        if parts == ["counts"] and method == "GET":
            items, _ = self.recorder.since(since)
            counts: dict[str, int] = {}
            for i in items:
                key = f"{i['service']}:{i['action']}"
                counts[key] = counts.get(key, 0) + 1
            return _json(200, counts)
        return _json(404, {"error": f"no such endpoint: {method} {path}"})


def _tidy_json_error(body: bytes) -> bytes:
    """moto writes the error text twice ("message" and "Message"); ECS sends "message"."""
    try:
        err = json.loads(body)
    except ValueError:
        return body
    if isinstance(err, dict) and "Message" in err:
        err.setdefault("message", err["Message"])
        del err["Message"]
        return json.dumps(err).encode()
    return body


def _json(status: int, obj: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    body = json.dumps(obj).encode()
    return status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))], body


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


# --------------------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------------------


def build_app() -> StandinApp:
    dispatcher = DomainDispatcherApplication(create_backend_app)
    # Build the ECS and EC2 apps now rather than on the first call (about a second each),
    # so the first real request is not the slow one.
    for service in ("ecs", "ec2"):
        dispatcher.app_instances[service] = create_backend_app(service)
    start_scale_ticker()
    return StandinApp(dispatcher)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("MOTO_PORT", "4580")))
    args = parser.parse_args(argv)
    os.environ.setdefault("MOTO_PORT", str(args.port))  # moto builds some URLs from it

    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    # werkzeug's per-request line says only "POST / 200" for every ECS call; our own
    # line names the action, so keep werkzeug for warnings and errors.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    app = build_app()
    server = make_server(args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler)

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: shutting down", signum)
        # shutdown() waits for serve_forever() to return, which runs in this (main)
        # thread: call it from another thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("standin moto listening on http://%s:%d (pid %d)", args.host, server.server_port, os.getpid())
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
    log.info("stopped")
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # The socket is closed and the logs are flushed; skip the interpreter's teardown of
    # moto's large module graph (about a second) so that stop/restart stays quick.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
