"""`ecs-executor check` against the cluster stack deployed into moto (after stacks.py): it
lists every container instance with its EC2 metadata options and the state of its Docker TLS.

Usage: check.py ENDPOINT OUTDIR ECS_EXECUTOR_BIN TLS_DIR

The ASG of the cluster stack is scaled to 2 instances and both are registered as container
instances of cluster `ci` (on AWS their ECS agent does that). moto's Auto Scaling launches
them without the launch template's MetadataOptions (seen with 5.2.5: they come up with
HttpTokens=optional), so the test sets them with ModifyInstanceMetadataOptions first, as the
template would: one instance required/1, the other optional with hop limit 2, and check must
pass the first and fail the second with the fix. No daemon with a certificate of this test's
fresh server CA is at the instances' 10.0.1.x addresses here (nothing at all, or something of
another test on this machine): check must name each one's Docker address and fail it (on AWS
this line reports the daemon's version over mutual TLS, and the next one that it refuses a
client without a certificate; tests/harness checks those against the stand-in's dockerd).
"""

import json
import pathlib
import subprocess
import sys

import boto3

endpoint, out, binary, tls = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3], pathlib.Path(sys.argv[4])
kw = dict(endpoint_url=endpoint, region_name="eu-west-1", aws_access_key_id="test", aws_secret_access_key="test")
ec2, ecs, asg = (boto3.client(s, **kw) for s in ("ec2", "ecs", "autoscaling"))
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


group = asg.describe_auto_scaling_groups()["AutoScalingGroups"][0]
asg.set_desired_capacity(AutoScalingGroupName=group["AutoScalingGroupName"], DesiredCapacity=2)
group = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[group["AutoScalingGroupName"]])["AutoScalingGroups"][0]
ids = sorted(i["InstanceId"] for i in group["Instances"])
check(len(ids) == 2, f"the ASG runs 2 instances: {ids}")
launched = ec2.describe_instances(InstanceIds=ids)["Reservations"]
as_launched = {i["InstanceId"]: i.get("MetadataOptions", {}) for r in launched for i in r["Instances"]}
print(f"note: moto launched them with metadata options {sorted({json.dumps(m, sort_keys=True) for m in as_launched.values()})}")
good, bad = ids
ec2.modify_instance_metadata_options(InstanceId=good, HttpTokens="required", HttpPutResponseHopLimit=1, HttpEndpoint="enabled")
ec2.modify_instance_metadata_options(InstanceId=bad, HttpTokens="optional", HttpPutResponseHopLimit=2, HttpEndpoint="enabled")
for i in ids:
    ecs.register_container_instance(cluster="ci", instanceIdentityDocument=json.dumps({"instanceId": i}))
ips = {i["InstanceId"]: i["PrivateIpAddress"] for r in ec2.describe_instances(InstanceIds=ids)["Reservations"] for i in r["Instances"]}

config = out / "check-config.toml"
config.write_text(
    f"""cluster = "ci"
region = "eu-west-1"
endpoint_url = "{endpoint}"
state_dir = "{out / 'check-state'}"
default_image = "alpine:3.20"
[aws]
access_key_id = "test"
secret_access_key = "test"
max_attempts = 1
[docker]
port = 2376
ca_file = "{tls / 'server-ca.pem'}"
cert_file = "{tls / 'client.pem'}"
key_file = "{tls / 'client-key.pem'}"
connect_timeout_secs = 1
"""
)
run = subprocess.run([binary, "--config", str(config), "check"], capture_output=True, text=True, timeout=120)
print(run.stdout, end="")
lines = run.stdout.splitlines()
check(run.returncode == 2, f"check fails (exit 2: no daemon of ours behind the instances here): exit {run.returncode}")
check("ok   AWS credentials and cluster ci in eu-west-1 (ACTIVE)" in lines, "check finds cluster ci ACTIVE")
check(
    f"ok   instance {good} metadata options: HttpTokens=required, hop limit 1" in lines,
    f"{good}: metadata options required / hop limit 1 reported ok",
)
bad_at = [n for n, line in enumerate(lines) if line.startswith(f"FAIL instance {bad} metadata options: HttpTokens=optional, HttpPutResponseHopLimit=2")]
check(len(bad_at) == 1, f"{bad}: HttpTokens=optional, hop limit 2 reported as a failure")
check(
    bool(bad_at) and f"modify-instance-metadata-options --instance-id {bad} --http-tokens required" in lines[bad_at[0] + 1],
    f"{bad}: the fix names the command",
)
for i in ids:
    docker = [line for line in lines if line.startswith(f"FAIL Docker at {ips[i]}:2376 on {i} (mutual TLS)")]
    check(len(docker) == 1, f"{i}: its Docker at {ips[i]}:2376 (mutual TLS) is checked, and fails here: {docker}")
n_instances = sum(1 for line in lines if " metadata options: " in line)
check(n_instances == 2, f"check reports the metadata options of every instance (2): {n_instances}")
print(f"check: {len(ids)} instances of the deployed stack reported (metadata options and Docker TLS)")
if failures:
    sys.exit(f"check: {len(failures)} check(s) failed")
