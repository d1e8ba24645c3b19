"""API request throttling for the stand-in, shaped like ECS's and EC2's (off by default).

ECS throttles per account and Region with one token bucket per *action category*: every
action of a category draws from the same bucket (a burst size, refilled at a sustained rate
per second). EC2 throttles per *action*, with a smaller bucket for unfiltered and
unpaginated calls of the big Describe* actions. Numbers: /work/shared/docs/ecs-at-scale.md
§1.1 (ECS, [S1]) and §1.2 (EC2, [S4]). Actions outside these tables are never throttled.

Control (standin_moto.py wires it to the HTTP port):
  POST /_standin/throttling {"enabled": true, "scale": 1.0, "buckets": {...}, "exempt_user_agents": [...]}
  GET  /_standin/throttling  -> state, bucket levels, throttled/allowed counts per action
"""

from __future__ import annotations

import threading
import time
from typing import Any

# category -> (burst, refill per second, actions)   [ecs-at-scale.md §1.1, S1]
ECS_CATEGORIES: dict[str, tuple[float, float, tuple[str, ...]]] = {
    "cluster-resource-modify": (100, 40, (
        "DeleteAttributes", "DeregisterContainerInstance", "ExecuteCommand", "PutAttributes",
        "RunTask", "StartTask", "StopTask", "UpdateContainerAgent", "UpdateContainerInstancesState",
    )),
    "cluster-resource-read": (100, 20, (
        "DescribeContainerInstances", "DescribeTasks", "ListAttributes", "ListContainerInstances",
        "ListTasks",
    )),
    "task-definition-read": (50, 20, (
        "DescribeTaskDefinition", "ListTaskDefinitions", "ListTaskDefinitionFamilies",
    )),
    "task-definition-modify": (20, 1, ("RegisterTaskDefinition", "DeregisterTaskDefinition")),
    "task-definition-delete": (5, 1, ("DeleteTaskDefinitions",)),
    "tag-modify": (20, 10, ("TagResource", "UntagResource")),
    "tag-read": (50, 20, ("ListTagsForResource",)),
    "cluster-read": (50, 20, ("DescribeClusters", "ListClusters")),
    "agent-modify": (200, 120, (
        "RegisterContainerInstance", "SubmitTaskStateChange", "SubmitContainerStateChange",
        "SubmitAttachmentStateChanges",
    )),
    "service-modify": (50, 5, ("CreateService", "UpdateService", "DeleteService")),
    "service-read": (100, 20, ("DescribeServices", "ListServices", "ListServicesByNamespace")),
}
ECS_ACTION_CATEGORY = {a: cat for cat, (_, _, actions) in ECS_CATEGORIES.items() for a in actions}

# EC2 [ecs-at-scale.md §1.2, S4]: one bucket per action.
EC2_NON_MUTATING = (100, 20)
EC2_MUTATING = (50, 5)
EC2_UNFILTERED = (50, 10)
EC2_NON_MUTATING_PREFIXES = ("Describe", "List", "Search", "Get")
# The actions whose unfiltered *and* unpaginated calls cost from the smaller bucket (the two the
# doc names; its list goes on with "…").
EC2_UNFILTERED_ACTIONS = ("DescribeInstances", "DescribeInstanceStatus")

# What ECS answers (HTTP 400). The body is what boto3 and the Rust SDK read ("Rate exceeded"
# is the message ECS throttling errors carry). The x-amzn-ErrorType value with the Coral
# namespace suffix is how AWS JSON-protocol services send throttles; the SDKs cut the code at
# ':' (botocore _inject_error_code, aws-smithy sanitize_error_code). That header form is from
# knowledge of AWS JSON services, not from a stored capture of an ECS response.
ECS_THROTTLE_TYPE = "ThrottlingException"
ECS_THROTTLE_HEADER = "ThrottlingException:http://internal.amazon.com/coral/com.amazon.coral.availability/"
ECS_THROTTLE_MESSAGE = "Rate exceeded"
EC2_THROTTLE_CODE = "RequestLimitExceeded"
EC2_THROTTLE_MESSAGE = "Request limit exceeded."

# The ECS agent talks to ECS over ACS/TCS and its own Submit* calls, not through the
# account's public-API buckets the way our agent stand-in's polling does; calls whose user
# agent contains one of these strings are never throttled (counted as "exempt").
DEFAULT_EXEMPT_USER_AGENTS = ("ecs-agent-standin",)


class Bucket:
    def __init__(self, burst: float, rate: float) -> None:
        self.burst = burst
        self.rate = rate
        self.tokens = burst
        self.stamp = time.monotonic()

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def level(self, now: float) -> float:
        return min(self.burst, self.tokens + (now - self.stamp) * self.rate)


def ec2_bucket(action: str, body: str) -> tuple[str, tuple[float, float]]:
    """(bucket name, (burst, rate)) of an EC2 call. `body` is the form-encoded query."""
    if action.startswith(EC2_NON_MUTATING_PREFIXES):
        if action in EC2_UNFILTERED_ACTIONS:
            filtered = any(k in body for k in ("InstanceId.", "Filter.", "MaxResults=", "NextToken="))
            if not filtered:
                return f"ec2:{action}:unfiltered", EC2_UNFILTERED
        return f"ec2:{action}", EC2_NON_MUTATING
    return f"ec2:{action}", EC2_MUTATING


class Throttle:
    """The account's buckets. Thread-safe; cheap enough to sit in front of every call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.enabled = False
            self.scale = 1.0
            self.overrides: dict[str, dict[str, float]] = {}
            self.exempt = list(DEFAULT_EXEMPT_USER_AGENTS)
            self._buckets: dict[str, Bucket] = {}
            self.throttled: dict[str, int] = {}
            self.allowed: dict[str, int] = {}
            self.exempted = 0

    def configure(self, spec: dict[str, Any]) -> dict[str, Any]:
        unknown = set(spec) - {"enabled", "scale", "buckets", "exempt_user_agents", "reset_counts"}
        if unknown:
            raise ValueError(f"unknown keys: {sorted(unknown)}")
        enabled = spec.get("enabled", self.enabled)
        if not isinstance(enabled, bool):
            raise ValueError("enabled must be true or false")
        scale = spec.get("scale", self.scale)
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) or scale <= 0:
            raise ValueError("scale must be a positive number")
        overrides = spec.get("buckets", self.overrides)
        if not isinstance(overrides, dict):
            raise ValueError("buckets must be an object {name: {burst, rate}}")
        for name, b in overrides.items():
            if not isinstance(b, dict) or set(b) - {"burst", "rate"}:
                raise ValueError(f"bucket {name}: give {{\"burst\": N, \"rate\": N}}")
            for k, v in b.items():
                if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                    raise ValueError(f"bucket {name}: {k} must be a non-negative number")
        exempt = spec.get("exempt_user_agents", self.exempt)
        if not isinstance(exempt, list) or not all(isinstance(e, str) and e for e in exempt):
            raise ValueError("exempt_user_agents must be a list of non-empty strings")
        with self._lock:
            self.enabled = enabled
            self.scale = float(scale)
            self.overrides = {k: dict(v) for k, v in overrides.items()}
            self.exempt = list(exempt)
            self._buckets = {}  # full again, at the new sizes
            if spec.get("reset_counts"):
                self.throttled, self.allowed, self.exempted = {}, {}, 0
        return self.state()

    def _size(self, name: str, default: tuple[float, float]) -> tuple[float, float]:
        o = self.overrides.get(name, {})
        burst = o.get("burst", default[0] * self.scale)
        rate = o.get("rate", default[1] * self.scale)
        return max(1.0, float(burst)), float(rate)

    def bucket_of(self, service: str, action: str, body: str) -> tuple[str, tuple[float, float]] | None:
        if service == "ecs":
            cat = ECS_ACTION_CATEGORY.get(action)
            if cat is None:
                return None
            burst, rate, _ = ECS_CATEGORIES[cat]
            return f"ecs:{cat}", (burst, rate)
        if service == "ec2":
            return ec2_bucket(action, body)
        return None

    def check(self, service: str | None, action: str | None, body: str, user_agent: str) -> str | None:
        """None to serve the call, else the name of the empty bucket."""
        if not self.enabled or not service or not action:
            return None
        found = self.bucket_of(service, action, body)
        if found is None:
            return None
        name, default = found
        key = f"{service}:{action}"
        with self._lock:
            if not self.enabled:
                return None
            if any(e in user_agent for e in self.exempt):
                self.exempted += 1
                return None
            bucket = self._buckets.get(name)
            if bucket is None:
                bucket = self._buckets[name] = Bucket(*self._size(name, default))
            if bucket.take(time.monotonic()):
                self.allowed[key] = self.allowed.get(key, 0) + 1
                return None
            self.throttled[key] = self.throttled.get(key, 0) + 1
            return name

    def state(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            buckets: dict[str, Any] = {}
            for cat, (burst, rate, actions) in ECS_CATEGORIES.items():
                name = f"ecs:{cat}"
                b, r = self._size(name, (burst, rate))
                live = self._buckets.get(name)
                buckets[name] = {"burst": b, "rate": r, "tokens": round(live.level(now) if live else b, 3),
                                 "actions": list(actions)}
            for name, live in self._buckets.items():
                if name.startswith("ec2:"):
                    buckets[name] = {"burst": live.burst, "rate": live.rate, "tokens": round(live.level(now), 3)}
            return {
                "enabled": self.enabled,
                "scale": self.scale,
                "exempt_user_agents": list(self.exempt),
                "buckets": buckets,
                "overrides": {k: dict(v) for k, v in self.overrides.items()},
                "throttled": dict(self.throttled),
                "allowed": dict(self.allowed),
                "exempt_calls": self.exempted,
            }
