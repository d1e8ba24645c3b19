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
  * SubmitTaskStateChange / SubmitContainerStateChange implemented;
  * /_standin/faults, /_standin/requests, /_standin/counts; /moto-api/reset clears them.
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

from moto.core.responses import ActionResult
from moto.core.utils import utcnow
from moto.ecs import models as ecs_models
from moto.ecs import responses as ecs_responses
from moto.ecs.exceptions import (
    ClusterNotFoundException,
    InvalidParameterException,
    TaskDefinitionMemoryError,
    TaskDefinitionMissingPropertyError,
)
from moto.moto_api._internal import mock_random
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

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
        instances = [
            ci for ci in self.container_instances.get(cluster.name, {}).values()
            if ci.status == "ACTIVE"
        ]
        if not instances:
            raise InvalidParameterException("No Container Instances were found in your cluster.")
        req = _requirements(task_def, overrides)
        tasks: list[Task] = []
        failures: dict[str, str] = {}
        for _ in range(count):
            misfits = {}
            for ci in instances:
                why = _misfit(ci, req)
                if why:
                    misfits[ci.container_instance_arn] = why
                    continue
                task = Task(
                    cluster, task_def, ci.container_instance_arn, req, backend=self,
                    group=group or f"family:{task_def.family}",
                    overrides=overrides or {}, started_by=started_by or "", tags=tags or [],
                    launch_type=launch_type or "", networking_configuration=networking_configuration,
                    capacity_provider_name=provider,
                )
                _reserve(ci, req, +1)
                _count_as(self, task, "PENDING")
                self.tasks.setdefault(cluster.name, {})[task.task_arn] = task
                tasks.append(task)
                break
            else:
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


def _register_container_instance(self: Backend, cluster_str: str, ec2_instance_id: str) -> Any:
    if cluster_str.split("/")[-1] not in self.clusters:
        raise ClusterNotFoundException  # moto: bare Exception -> HTTP 500 page
    return _orig_register_ci(self, cluster_str, ec2_instance_id)


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
Backend._validate_container_defs = staticmethod(_validate_container_defs)  # type: ignore[assignment]


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


Response.run_task = _resp_run_task  # type: ignore[method-assign]
Response.describe_tasks = _resp_describe_tasks  # type: ignore[method-assign]
Response.list_tasks = _resp_list_tasks  # type: ignore[method-assign]
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


def aws_error(protocol: str, error: str, message: str, status: int) -> tuple[int, list[tuple[str, str]], bytes]:
    """An error the AWS SDKs parse like a real one. JSON protocol (ECS): the SDK takes the
    code from x-amzn-ErrorType (then __type), so ThrottlingException is classified as
    throttling. EC2 query protocol: <Response><Errors><Error>... with <RequestID>."""
    request_id = str(uuid.uuid4())
    if protocol == "json":
        body = json.dumps({"__type": error, "message": message}).encode()
        headers = [
            ("Content-Type", "application/x-amz-json-1.1"),
            ("x-amzn-ErrorType", error),
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


class Recorder:
    """Every AWS API call, in arrival order. seq never restarts (not even on clear or
    reset), so a client's `since` cursor stays valid."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[dict[str, Any]] = []
        self._seq = 0

    def add(self, service: str, action: str | None, body: str, region: str | None,
            user_agent: str = "") -> dict[str, Any]:
        with self._lock:
            self._seq += 1
            # user_agent tells the executor's calls (SDK app name "ecs-executor") from the agent's.
            item = {
                "seq": self._seq, "service": service, "action": action, "body": body,
                "time": time.time(), "region": region, "status": None, "user_agent": user_agent,
            }
            self._items.append(item)
            return item

    def since(self, seq: int) -> tuple[list[dict[str, Any]], int]:
        with self._lock:
            return [dict(i) for i in self._items if i["seq"] > seq], self._seq

    def clear(self) -> None:
        with self._lock:
            self._items = []


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
        self.backend_lock = threading.RLock()

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
        fault = self.faults.take(service, action, text)
        if fault:
            item["fault"] = fault["id"]
            if fault["delay_ms"]:
                time.sleep(fault["delay_ms"] / 1000.0)
        if fault and fault["error"]:
            status, headers, body = aws_error(protocol, fault["error"], fault["message"], fault["status"])
        else:
            status, headers, body = self.call_moto(environ, protocol)
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
                    spec = json.loads(_read_body(environ) or b"{}")
                    if not isinstance(spec, dict):
                        raise ValueError("body must be a JSON object")
                    rule = self.faults.add(spec)
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
