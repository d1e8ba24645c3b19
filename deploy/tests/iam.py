"""The runner policy is exactly enough, in the two ways this machine can show it.

Usage: iam.py POLICY_JSON REPO_ROOT (prints the moto port protocol below)

1. From the code: every ECS/EC2/Secrets Manager operation host/src calls (SDK method names matched against
   botocore's operation list) has an Allow in the policy, and every Allow'd action is one the
   code calls, or a dependent action the code makes necessary (ecs:TagResource for the `tags`
   RunTask/RegisterTaskDefinition send, iam:PassRole for task_role_arn/execution_role_arn);
   the executor's access-denied messages name each action's statement as the policy does.
2. Against moto's IAM enforcement (INITIAL_NO_AUTH_ACTION_COUNT): one user with the whole
   policy and one per Allow statement with that statement removed; every action of the
   removed statement must then be refused with AccessDenied naming it, and none refused with
   the whole policy. moto 5.2.5 matches Resource against "*" and fails any Condition, so the
   policy is reduced to its actions for this part (Resource "*", no Condition, conditional
   Denies dropped): resources and conditions are real-AWS checks (docs/deploy.md).
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import time
import urllib.request

import boto3
import botocore.session
from botocore import xform_name
from botocore.exceptions import ClientError

policy = json.loads(pathlib.Path(sys.argv[1]).read_text())
root = pathlib.Path(sys.argv[2])
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def actions(statement):
    a = statement["Action"]
    return [a] if isinstance(a, str) else list(a)


allows = [s for s in policy["Statement"] if s["Effect"] == "Allow"]
allowed = {a for s in allows for a in actions(s)}

# ---- 1. the policy against the code ----
source = {f: f.read_text() for f in (root / "host/src").rglob("*.rs")}
session = botocore.session.get_session()
SERVICES = ("ecs", "ec2", "secretsmanager")
service_ops = {svc: {xform_name(o): o for o in session.get_service_model(svc).operation_names} for svc in SERVICES}
code_actions = set()
for path, text in source.items():
    # host/src/docker/ talks to Docker (bollard), never to AWS: its `create_image` (a pull) is
    # not EC2's CreateImage.
    if root / "host/src/docker" in path.parents and "aws_sdk_" not in text:
        continue
    called = set(re.findall(r"\.([a-z][a-z0-9_]*)\(", text))
    # A method name more than one service has (`tag_resource`) counts for the services whose
    # SDK the file uses (host/src/ecs/ is ECS's); a name only one service has counts anywhere.
    uses = {svc for svc in SERVICES if f"aws_sdk_{svc}" in text}
    if root / "host/src/ecs" in path.parents:
        uses.add("ecs")
    for svc, ops in service_ops.items():
        for c in called & ops.keys():
            shared = sum(c in o for o in service_ops.values()) > 1
            if not shared or svc in uses:
                code_actions.add(f"{svc}:{ops[c]}")
tasks_rs = source[root / "host/src/ecs/tasks.rs"]
request_rs = source[root / "host/src/task/request.rs"]
dependent = {
    # RunTask is sent with tags (tasks.rs `req.tags(...)`): ECS then authorizes ecs:TagResource.
    "ecs:TagResource": ".run_task(" in tasks_rs and "req.tags(" in tasks_rs,
    # Task definitions may name roles (request.rs task_role_arn / execution_role_arn).
    "iam:PassRole": "task_role_arn" in request_rs and "execution_role_arn" in request_rs,
}
for action, evidence in dependent.items():
    check(evidence and action in allowed, f"{action}: needed by the code (dependent action) and allowed")
missing = code_actions - allowed
extra = allowed - code_actions - set(dependent)
check(not missing, f"every operation host/src calls is allowed ({len(code_actions)}): missing {sorted(missing)}")
check(not extra, f"every allowed action is called by host/src or dependent: extra {sorted(extra)}")

# The executor's access-denied messages name the statement that allows the denied action
# (host/src/aws.rs RUNNER_POLICY_STATEMENTS): that table must be this policy's.
aws_rs = source[root / "host/src/aws.rs"]
# An action may be allowed by several statements (ecs:TagResource): (action, Sid) pairs.
table = set(re.findall(r'\("([a-z0-9]+:[A-Za-z]+)", "([A-Za-z]+)"\)', aws_rs.split("RUNNER_POLICY_STATEMENTS", 1)[1].split("];", 1)[0]))
by_policy = {(a, s["Sid"]) for s in allows for a in actions(s)}
check(table == by_policy, f"host/src/aws.rs names each action's statements as the policy does ({len(table)} pairs): "
      f"differs {sorted(table ^ by_policy)}")

# ---- 1b. resources and conditions, where moto cannot look: the warm-pool claim ----
# moto ignores Resource and Condition (part 2 below), so the statements that differ only in
# them are evaluated here, by IAM's rules for the operators the policy uses: an explicit Deny
# wins, else some Allow whose Action, Resource and every Condition match.


def _like(pattern, value):
    return re.fullmatch(re.escape(pattern).replace(r"\*", ".*").replace(r"\?", "."), value) is not None


def _cond_ok(op, key, want, ctx):
    want = [want] if isinstance(want, str) else list(want)
    if op.startswith("ForAllValues:"):
        inner = op.split(":", 1)[1]
        return all(_cond_ok(inner, key, want, {key: v}) for v in ctx.get(key, []))
    if key not in ctx:
        return False
    got = ctx[key]
    if op == "StringEquals":
        return got in want
    if op in ("StringLike", "ArnLike"):
        return any(_like(w, got) for w in want)
    if op == "Bool":
        return str(got).lower() in [str(w).lower() for w in want]
    raise SystemExit(f"iam.py: condition operator {op} not evaluated here; add it")


def _matches(statement, action, resource, ctx):
    if action not in actions(statement):
        return False
    res = statement["Resource"]
    if not any(_like(r, resource) for r in ([res] if isinstance(res, str) else res)):
        return False
    return all(_cond_ok(op, k, v, ctx) for op, kv in statement.get("Condition", {}).items() for k, v in kv.items())


def allowed_by(action, resource, ctx):
    if any(s["Effect"] == "Deny" and _matches(s, action, resource, ctx) for s in policy["Statement"]):
        return []
    return [s["Sid"] for s in allows if _matches(s, action, resource, ctx)]


task_arn = [r for s in allows for r in ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"]) if ":task/" in r][0]
ours = task_arn.replace("*", "0123456789abcdef")
other_cluster = re.sub(r":task/[^/]+/", ":task/other-cluster/", ours)
# stacks.py deploys runner.yaml with its default FamilyPrefix (the executor's default family_prefix).
prefix = "ecs-executor"
job_tags = ["ecs-executor:runner", "ecs-executor:job-id", "ecs-executor:project"]
for tag in job_tags:
    check(f'"{tag}"' in source[root / "host/src/ecs/mod.rs"], f"the claim's tag {tag} is the code's (host/src/ecs/mod.rs)")
claim = {"aws:ResourceTag/ecs-executor:managed-by": prefix, "aws:TagKeys": job_tags}
for what, resource, ctx, want in [
    ("a pooled job's claim tags its warm task (ours: managed-by tag)", ours, claim, ["TagClaimedWarmTasks"]),
    ("RunTask's tags on create", ours, {"ecs:CreateAction": "RunTask", "aws:TagKeys": job_tags}, ["TagOnCreate"]),
    ("an untagged task is not taggable", ours, {"aws:TagKeys": job_tags}, []),
    ("a foreign task (another managed-by) is not taggable", ours,
     {**claim, "aws:ResourceTag/ecs-executor:managed-by": prefix + "-other"}, []),
    ("a task of another cluster is not taggable", other_cluster, claim, []),
    ("the claim cannot set the managed-by tag", ours, {**claim, "aws:TagKeys": job_tags + ["ecs-executor:managed-by"]}, []),
    ("the claim cannot set the pool tag", ours, {**claim, "aws:TagKeys": ["ecs-executor:pool"]}, []),
]:
    got = allowed_by("ecs:TagResource", resource, ctx)
    check(got == want, f"ecs:TagResource: {what}: allowed by {got}, want {want}")

# ---- 2. moto's IAM enforcement ----
EXAMPLE_TD = "ecs-executor-0123456789abcdef:1"
CALLS = {
    "ecs:RunTask": lambda c: c.run_task(cluster="ci", taskDefinition=EXAMPLE_TD),
    "ecs:DescribeTasks": lambda c: c.describe_tasks(cluster="ci", tasks=["0123"]),
    "ecs:StopTask": lambda c: c.stop_task(cluster="ci", task="0123"),
    "ecs:ListTasks": lambda c: c.list_tasks(cluster="ci"),
    "ecs:DescribeContainerInstances": lambda c: c.describe_container_instances(cluster="ci", containerInstances=["x"]),
    "ecs:DescribeClusters": lambda c: c.describe_clusters(clusters=["ci"]),
    "ecs:ListContainerInstances": lambda c: c.list_container_instances(cluster="ci"),
    "ecs:RegisterTaskDefinition": lambda c: c.register_task_definition(
        family="ecs-executor-0123456789abcdef", containerDefinitions=[{"name": "build", "image": "alpine", "memory": 64}]
    ),
    "ecs:DeleteTaskDefinitions": lambda c: c.delete_task_definitions(taskDefinitions=[EXAMPLE_TD]),
    "ecs:DescribeTaskDefinition": lambda c: c.describe_task_definition(taskDefinition=EXAMPLE_TD),
    "ecs:DeregisterTaskDefinition": lambda c: c.deregister_task_definition(taskDefinition=EXAMPLE_TD),
    "ecs:ListTaskDefinitions": lambda c: c.list_task_definitions(),
    "ecs:ListTaskDefinitionFamilies": lambda c: c.list_task_definition_families(),
    "ecs:TagResource": lambda c: c.tag_resource(
        resourceArn="arn:aws:ecs:eu-west-1:123456789012:task/ci/0123", tags=[{"key": "k", "value": "v"}]
    ),
    "ec2:DescribeInstances": lambda c: c.describe_instances(InstanceIds=["i-0123456789abcdef0"]),
    "secretsmanager:CreateSecret": lambda c: c.create_secret(Name="ecs-executor/registry/r/p/s/h/auth", SecretString="{}"),
    "secretsmanager:PutSecretValue": lambda c: c.put_secret_value(SecretId="ecs-executor/registry/r/p/s/h/auth", SecretString="{}"),
    "secretsmanager:RestoreSecret": lambda c: c.restore_secret(SecretId="ecs-executor/registry/r/p/s/h/auth"),
    "secretsmanager:DeleteSecret": lambda c: c.delete_secret(
        SecretId="ecs-executor/registry/r/p/s/h/auth", ForceDeleteWithoutRecovery=True
    ),
    "secretsmanager:ListSecrets": lambda c: c.list_secrets(),
}
# iam:PassRole is not an API call: ECS evaluates it inside RunTask/RegisterTaskDefinition,
# which moto does not. Part 1 is its proof here.
UNTESTABLE = {"iam:PassRole"}


def action_only(statements):
    out = []
    for s in statements:
        if s["Effect"] == "Deny" and "Condition" in s:
            continue
        out.append({"Effect": s["Effect"], "Action": actions(s), "Resource": "*"})
    return {"Version": "2012-10-17", "Statement": out}


variants = [("whole", policy["Statement"])] + [
    (s["Sid"], [t for t in policy["Statement"] if t is not s]) for s in allows
]
port = int(os.environ.get("IAM_MOTO_PORT", "4597"))
endpoint = f"http://127.0.0.1:{port}"
moto = subprocess.Popen(
    [os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
    env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(3 * len(variants))},
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
)
try:
    for _ in range(100):
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)
            break
        except Exception:
            time.sleep(0.1)
    kw = dict(endpoint_url=endpoint, region_name="eu-west-1")
    iam = boto3.client("iam", aws_access_key_id="setup", aws_secret_access_key="setup", **kw)
    keys = {}
    # Exactly 3 unauthenticated calls per user; from then on moto enforces.
    for i, (name, statements) in enumerate(variants):
        user = f"runner-{i}"
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="p", PolicyDocument=json.dumps(action_only(statements)))
        keys[name] = iam.create_access_key(UserName=user)["AccessKey"]

    def denied(name, action):
        k = keys[name]
        client = boto3.client(
            action.split(":")[0], aws_access_key_id=k["AccessKeyId"], aws_secret_access_key=k["SecretAccessKey"], **kw
        )
        try:
            CALLS[action](client)
            return False
        except ClientError as e:
            raw = str(e)
            return e.response["ResponseMetadata"]["HTTPStatusCode"] == 403 and "AccessDenied" in raw and (
                action in raw or "is not authorized to perform" in raw
            )

    testable = sorted(allowed - UNTESTABLE)
    check(not [a for a in testable if a not in CALLS], f"a call for every allowed action: {sorted(set(testable) - set(CALLS))}")
    refused_whole = [a for a in testable if denied("whole", a)]
    check(not refused_whole, f"whole policy: none of {len(testable)} actions refused {refused_whole}")
    proven = 0
    for s in allows:
        acts = [a for a in actions(s) if a not in UNTESTABLE]
        if not acts:
            print(f"skip {s['Sid']}: {actions(s)} not an API call (proven by part 1)")
            continue
        others = {a for t in allows if t is not s for a in actions(t)}
        if all(a in others for a in acts):
            # Differs from another statement only in Resource/Condition, which moto ignores:
            # proven by part 1b (and the whole policy must allow the action: above).
            print(f"skip {s['Sid']}: {', '.join(acts)} also allowed by another statement (resources/conditions: part 1b)")
            continue
        not_refused = [a for a in acts if not denied(s["Sid"], a)]
        check(not not_refused, f"without {s['Sid']}: {', '.join(acts)} refused with AccessDenied {not_refused or ''}")
        proven += not not_refused
    print(f"iam: {proven} of {len(allows)} Allow statements proven necessary against moto, "
          f"{len(allows) - proven} by the code only; {len(code_actions)} operations called by host/src")
    pathlib.Path(sys.argv[1]).with_name("iam-figures.json").write_text(
        json.dumps({"allow_statements": len(allows), "proven_by_moto": proven, "code_operations": len(code_actions)})
    )
finally:
    moto.terminate()
    moto.wait(timeout=10)
if failures:
    sys.exit(f"iam: {len(failures)} check(s) failed")
