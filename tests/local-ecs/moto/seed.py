"""Seed the running stand-in moto with the one-instance ECS cluster the tests use.

Creates (only what is missing, so it can run any number of times):
  ECS cluster `local`; VPC 127.0.0.0/16 with subnet 127.0.0.0/24; one EC2 instance with
  private IP 127.0.0.1 and an Elastic IP 127.0.0.2 associated (its public IP); that
  instance registered as a container instance of `local`.
Prints one JSON object on stdout:
  {"cluster_arn","container_instance_arn","instance_id","private_ip","public_ip",
   "subnet_id","vpc_id"}
Usage: $STATE/venv/bin/python seed.py --endpoint http://127.0.0.1:4580 [--region us-east-1]

--cluster NAME: another cluster name than `local` (for a test's own moto and agent).
Options for a production-like cluster (all off by default; tests/local-ecs/CONTRACT.md):
  --instances N        N container instances (instance k: private 127.0.0.(2k-1), public
                       127.0.0.(2k), availability zones a, b, c in turn); the output gains
                       "instances": [{container_instance_arn, instance_id, private_ip,
                       public_ip, availability_zone, cpu, memory, ...}, ...] when N > 1
  --cpu U --memory MiB registered resources of each seeded instance (default moto's 4096/7482)
  --capacity-provider NAME   create NAME with managed scaling and make it the cluster's
                       default strategy (the seeded instances stay outside it: base capacity)
  --scaling JSON       POST /_standin/scaling settings, e.g. '{"scale_out_delay_s": 5}'
  --throttling [--throttle-scale X]   switch ECS/EC2 throttling on
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import boto3
from botocore.config import Config

CLUSTER = "local"
VPC_CIDR = "127.0.0.0/16"
SUBNET_CIDR = "127.0.0.0/24"
PRIVATE_IP = "127.0.0.1"
PUBLIC_IP = "127.0.0.2"
NAME_TAG = "ecs-executor-local"
# moto accepts any well-formed AMI id for run_instances; it only shows up as the
# container instance's ecs.ami-id attribute.
IMAGE_ID = "ami-12c6146b"


def fail(msg: str) -> None:
    print(f"seed: {msg}", file=sys.stderr)
    sys.exit(1)


def control(endpoint: str, method: str, path: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(endpoint + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as err:
        fail(f"{method} {path}: HTTP {err.code} {err.read().decode(errors='replace')}")


def seed(endpoint: str, region: str, ecs: Any = None, ec2: Any = None, instances: int = 1,
         cpu: int | None = None, memory: int | None = None,
         capacity_provider: str | None = None, cluster: str = CLUSTER) -> dict[str, Any]:
    """Idempotent; returns what main() prints. Pass boto3 clients to reuse them (tests).
    `cluster`: another name than `local` (a test's own moto and agent, e.g. iam_e2e)."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    cfg = Config(retries={"max_attempts": 2, "mode": "standard"})
    ecs = ecs or boto3.client("ecs", endpoint_url=endpoint, region_name=region, config=cfg)
    ec2 = ec2 or boto3.client("ec2", endpoint_url=endpoint, region_name=region, config=cfg)

    clusters = ecs.describe_clusters(clusters=[cluster])["clusters"]
    active = [c for c in clusters if c["status"] == "ACTIVE"]
    cluster_arn = active[0]["clusterArn"] if active else ecs.create_cluster(clusterName=cluster)["cluster"]["clusterArn"]

    vpcs = ec2.describe_vpcs(Filters=[{"Name": "cidr-block", "Values": [VPC_CIDR]}])["Vpcs"]
    vpc_id = vpcs[0]["VpcId"] if vpcs else ec2.create_vpc(CidrBlock=VPC_CIDR)["Vpc"]["VpcId"]

    subnets = ec2.describe_subnets(
        Filters=[{"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "cidr-block", "Values": [SUBNET_CIDR]}]
    )["Subnets"]
    subnet_id = (
        subnets[0]["SubnetId"]
        if subnets
        else ec2.create_subnet(VpcId=vpc_id, CidrBlock=SUBNET_CIDR, AvailabilityZone=f"{region}a")["Subnet"]["SubnetId"]
    )

    reservations = ec2.describe_instances(
        Filters=[
            {"Name": "private-ip-address", "Values": [PRIVATE_IP]},
            {"Name": "subnet-id", "Values": [subnet_id]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
    )["Reservations"]
    running = [i for r in reservations for i in r["Instances"]]
    if running:
        instance_id = running[0]["InstanceId"]
        ec2.modify_instance_metadata_options(
            InstanceId=instance_id, HttpTokens="required", HttpPutResponseHopLimit=1, HttpEndpoint="enabled",
        )
    else:
        instance_id = ec2.run_instances(
            ImageId=IMAGE_ID, InstanceType="m5.large", MinCount=1, MaxCount=1,
            SubnetId=subnet_id, PrivateIpAddress=PRIVATE_IP,
            # As the deployment kit launches them: IMDSv2 only, one hop (containers cannot reach it).
            MetadataOptions={"HttpTokens": "required", "HttpPutResponseHopLimit": 1, "HttpEndpoint": "enabled"},
            TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": NAME_TAG}]}],
        )["Instances"][0]["InstanceId"]

    addresses = ec2.describe_addresses(Filters=[{"Name": "public-ip", "Values": [PUBLIC_IP]}])["Addresses"]
    if addresses:
        address = addresses[0]
    else:
        address = ec2.allocate_address(Domain="vpc", Address=PUBLIC_IP)
    if address.get("InstanceId") != instance_id:
        ec2.associate_address(AllocationId=address["AllocationId"], InstanceId=instance_id, AllowReassociation=True)

    ci_arns = ecs.list_container_instances(cluster=cluster)["containerInstanceArns"]
    container_instance_arn = None
    if ci_arns:
        for ci in ecs.describe_container_instances(cluster=cluster, containerInstances=ci_arns)["containerInstances"]:
            if ci["ec2InstanceId"] == instance_id:
                container_instance_arn = ci["containerInstanceArn"]
                break
    if container_instance_arn is None:
        doc = json.dumps({"instanceId": instance_id, "region": region, "privateIp": PRIVATE_IP})
        resources = [{"name": n, "type": "INTEGER", "integerValue": v}
                     for n, v in (("CPU", cpu), ("MEMORY", memory)) if v is not None]
        container_instance_arn = ecs.register_container_instance(
            cluster=cluster, instanceIdentityDocument=doc, totalResources=resources,
        )["containerInstance"]["containerInstanceArn"]

    # Check the way the executor will look: container instance -> EC2 instance -> IPs.
    ci = ecs.describe_container_instances(cluster=cluster, containerInstances=[container_instance_arn])
    ci_instance = ci["containerInstances"][0]["ec2InstanceId"]
    if ci_instance != instance_id:
        fail(f"container instance points at {ci_instance}, expected {instance_id}")
    inst = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    if inst.get("PrivateIpAddress") != PRIVATE_IP or inst.get("PublicIpAddress") != PUBLIC_IP:
        fail(
            f"instance {instance_id} has private {inst.get('PrivateIpAddress')} / public "
            f"{inst.get('PublicIpAddress')}, expected {PRIVATE_IP} / {PUBLIC_IP}"
        )

    result: dict[str, Any] = {
        "cluster_arn": cluster_arn,
        "container_instance_arn": container_instance_arn,
        "instance_id": instance_id,
        "private_ip": PRIVATE_IP,
        "public_ip": PUBLIC_IP,
        "subnet_id": subnet_id,
        "vpc_id": vpc_id,
    }
    if instances > 1:
        # Instances 2..N through the stand-in's own registration (it can put each in its own
        # availability zone); idempotent per address.
        first = control(endpoint, "GET", f"/_standin/instances/{instance_id}?region={region}")
        listed = [first]
        for k in range(2, instances + 1):
            spec: dict[str, Any] = {"cluster": cluster, "private_ip": f"127.0.0.{2 * k - 1}",
                                    "public_ip": f"127.0.0.{2 * k}"}
            if cpu is not None:
                spec["cpu"] = cpu
            if memory is not None:
                spec["memory"] = memory
            listed.append(control(endpoint, "POST", f"/_standin/instances?region={region}", spec))
        result["instances"] = listed
    if capacity_provider:
        known = ecs.describe_capacity_providers(capacityProviders=[capacity_provider])["capacityProviders"]
        if not known:
            ecs.create_capacity_provider(name=capacity_provider, autoScalingGroupProvider={
                "autoScalingGroupArn": f"arn:aws:autoscaling:{region}:123456789012:autoScalingGroup:"
                                       f"00000000-0000-0000-0000-000000000000:autoScalingGroupName/{capacity_provider}",
                "managedScaling": {"status": "ENABLED", "targetCapacity": 100},
                "managedTerminationProtection": "DISABLED",
            })
        ecs.put_cluster_capacity_providers(
            cluster=cluster, capacityProviders=[capacity_provider],
            defaultCapacityProviderStrategy=[{"capacityProvider": capacity_provider, "weight": 1, "base": 0}],
        )
        result["capacity_provider"] = capacity_provider
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description="Seed the stand-in moto with cluster `local`.")
    parser.add_argument("--endpoint", default=f"http://127.0.0.1:{os.environ.get('MOTO_PORT', '4580')}")
    parser.add_argument("--region", default=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    parser.add_argument("--wait", type=float, default=30.0,
                        help="seconds to wait for the server to answer /_standin/health (0: no wait)")
    parser.add_argument("--cluster", default=CLUSTER, help=f"the cluster's name (default {CLUSTER})")
    parser.add_argument("--instances", type=int, default=1, help="container instances (default 1)")
    parser.add_argument("--cpu", type=int, help="registered CPU units of each seeded instance")
    parser.add_argument("--memory", type=int, help="registered memory (MiB) of each seeded instance")
    parser.add_argument("--capacity-provider", help="create this capacity provider with managed scaling")
    parser.add_argument("--scaling", help="JSON for POST /_standin/scaling")
    parser.add_argument("--throttling", action="store_true", help="switch ECS/EC2 throttling on")
    parser.add_argument("--throttle-scale", type=float, default=1.0, help="bucket size factor (default 1)")
    args = parser.parse_args()
    if not 1 <= args.instances <= 127:
        fail("--instances must be between 1 and 127")
    wait_for_server(args.endpoint, args.wait)
    if args.scaling:
        control(args.endpoint, "POST", "/_standin/scaling", json.loads(args.scaling))
    out = seed(args.endpoint, args.region, instances=args.instances, cpu=args.cpu, memory=args.memory,
               capacity_provider=args.capacity_provider, cluster=args.cluster)
    if args.throttling:  # last, so that seeding itself is not throttled
        control(args.endpoint, "POST", "/_standin/throttling", {"enabled": True, "scale": args.throttle_scale})
    print(json.dumps(out))


def wait_for_server(endpoint: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while timeout > 0:
        try:
            with urllib.request.urlopen(f"{endpoint}/_standin/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            fail(f"no stand-in moto answering at {endpoint} after {timeout:.0f} s")
        time.sleep(0.1)


if __name__ == "__main__":
    main()
