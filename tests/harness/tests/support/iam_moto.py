"""Set up a moto of iam_e2e's own for jobs under the runner policy alone.

Usage: $STATE/venv/bin/python iam_moto.py ENDPOINT REGION CLUSTER RUNNER_YAML
(the moto at ENDPOINT is tests/local-ecs/moto/standin_moto.py, started by the test on a port of
its own). Seeds CLUSTER with one container instance at 127.0.0.1 (seed.py), creates IAM users
    admin           Action "*" (the test's agent stand-in and the test's own checks),
    whole           the runner policy of RUNNER_YAML,
    without:<Sid>   the runner policy without that Allow statement (one user per statement),
then switches moto's IAM enforcement on (/moto-api/reset-auth 0: INITIAL_NO_AUTH_ACTION_COUNT
0 from now on) and prints one JSON object: {"seed": ..., "statements": [{sid, effect, actions}],
"users": {name: {"id", "secret"}}}.

moto 5.2.5 matches Resource against "*" and fails any Condition, so the policies are reduced to
their actions (Resource "*", no Condition, conditional Denies dropped), as deploy/tests/iam.py
does: resources and conditions are real-AWS checks (docs/deploy.md).
"""

import json
import pathlib
import sys
import urllib.request

import boto3
import yaml

endpoint, region, cluster, runner_yaml = sys.argv[1:5]
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[4] / "tests/local-ecs/moto"))
import seed  # noqa: E402


class CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short forms (!Sub, !Ref, !If, ...) kept as {"!Tag": value}."""


def _tag(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {"!" + suffix: value}


CfnLoader.add_multi_constructor("!", _tag)

template = yaml.load(pathlib.Path(runner_yaml).read_text(), Loader=CfnLoader)
raw = template["Resources"]["RunnerRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
statements = []
for s in raw:
    if isinstance(s, dict) and "!If" in s:  # !If [Condition, statement, !Ref AWS::NoValue]
        s = s["!If"][1]
    actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
    statements.append({"sid": s["Sid"], "effect": s["Effect"], "actions": actions,
                       "conditional": "Condition" in s})


def action_only(stmts):
    out = [{"Effect": s["effect"], "Action": s["actions"], "Resource": "*"}
           for s in stmts if not (s["effect"] == "Deny" and s["conditional"])]
    return {"Version": "2012-10-17", "Statement": out}


seeded = seed.seed(endpoint, region, cluster=cluster)
iam = boto3.client("iam", endpoint_url=endpoint, region_name=region,
                   aws_access_key_id="setup", aws_secret_access_key="setup")
policies = {"admin": {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]},
            "whole": action_only(statements)}
for s in statements:
    if s["effect"] == "Allow":
        policies[f"without:{s['sid']}"] = action_only([t for t in statements if t is not s])
users = {}
for i, (name, policy) in enumerate(policies.items()):
    user = f"iam-e2e-{i}"
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="runner", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    users[name] = {"id": key["AccessKeyId"], "secret": key["SecretAccessKey"], "user": user}

req = urllib.request.Request(endpoint + "/moto-api/reset-auth", data=b"0", method="POST",
                                     headers={"Content-Type": "text/plain"})
with urllib.request.urlopen(req, timeout=10) as resp:
    json.loads(resp.read())
print(json.dumps({"seed": seeded, "statements": statements, "users": users}))
