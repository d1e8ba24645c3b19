"""Seed the running stand-in moto with the one-instance ECS cluster the tests use.

Creates (only what is missing, so it can run any number of times):
  ECS cluster `local`; VPC 127.0.0.0/16 with subnet 127.0.0.0/24; one EC2 instance with
  private IP 127.0.0.1 and an Elastic IP 127.0.0.2 associated (its public IP); that
  instance registered as a container instance of `local`.
Prints one JSON object on stdout:
  {"cluster_arn","container_instance_arn","instance_id","private_ip","public_ip",
   "subnet_id","vpc_id"}
Usage: $STATE/venv/bin/python seed.py --endpoint http://127.0.0.1:4580 [--region us-east-1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
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


def seed(endpoint: str, region: str, ecs: Any = None, ec2: Any = None) -> dict[str, str]:
    """Idempotent; returns what main() prints. Pass boto3 clients to reuse them (tests)."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    cfg = Config(retries={"max_attempts": 2, "mode": "standard"})
    ecs = ecs or boto3.client("ecs", endpoint_url=endpoint, region_name=region, config=cfg)
    ec2 = ec2 or boto3.client("ec2", endpoint_url=endpoint, region_name=region, config=cfg)

    clusters = ecs.describe_clusters(clusters=[CLUSTER])["clusters"]
    active = [c for c in clusters if c["status"] == "ACTIVE"]
    cluster_arn = active[0]["clusterArn"] if active else ecs.create_cluster(clusterName=CLUSTER)["cluster"]["clusterArn"]

    vpcs = ec2.describe_vpcs(Filters=[{"Name": "cidr-block", "Values": [VPC_CIDR]}])["Vpcs"]
    vpc_id = vpcs[0]["VpcId"] if vpcs else ec2.create_vpc(CidrBlock=VPC_CIDR)["Vpc"]["VpcId"]

    subnets = ec2.describe_subnets(
        Filters=[{"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "cidr-block", "Values": [SUBNET_CIDR]}]
    )["Subnets"]
    subnet_id = (
        subnets[0]["SubnetId"]
        if subnets
        else ec2.create_subnet(VpcId=vpc_id, CidrBlock=SUBNET_CIDR)["Subnet"]["SubnetId"]
    )

    reservations = ec2.describe_instances(
        Filters=[
            {"Name": "private-ip-address", "Values": [PRIVATE_IP]},
            {"Name": "subnet-id", "Values": [subnet_id]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
    )["Reservations"]
    instances = [i for r in reservations for i in r["Instances"]]
    if instances:
        instance_id = instances[0]["InstanceId"]
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

    ci_arns = ecs.list_container_instances(cluster=CLUSTER)["containerInstanceArns"]
    container_instance_arn = None
    if ci_arns:
        for ci in ecs.describe_container_instances(cluster=CLUSTER, containerInstances=ci_arns)["containerInstances"]:
            if ci["ec2InstanceId"] == instance_id:
                container_instance_arn = ci["containerInstanceArn"]
                break
    if container_instance_arn is None:
        doc = json.dumps({"instanceId": instance_id, "region": region, "privateIp": PRIVATE_IP})
        container_instance_arn = ecs.register_container_instance(
            cluster=CLUSTER, instanceIdentityDocument=doc
        )["containerInstance"]["containerInstanceArn"]

    # Check the way the executor will look: container instance -> EC2 instance -> IPs.
    ci = ecs.describe_container_instances(cluster=CLUSTER, containerInstances=[container_instance_arn])
    ci_instance = ci["containerInstances"][0]["ec2InstanceId"]
    if ci_instance != instance_id:
        fail(f"container instance points at {ci_instance}, expected {instance_id}")
    inst = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    if inst.get("PrivateIpAddress") != PRIVATE_IP or inst.get("PublicIpAddress") != PUBLIC_IP:
        fail(
            f"instance {instance_id} has private {inst.get('PrivateIpAddress')} / public "
            f"{inst.get('PublicIpAddress')}, expected {PRIVATE_IP} / {PUBLIC_IP}"
        )

    return {
        "cluster_arn": cluster_arn,
        "container_instance_arn": container_instance_arn,
        "instance_id": instance_id,
        "private_ip": PRIVATE_IP,
        "public_ip": PUBLIC_IP,
        "subnet_id": subnet_id,
        "vpc_id": vpc_id,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Seed the stand-in moto with cluster `local`.")
    parser.add_argument("--endpoint", default=f"http://127.0.0.1:{os.environ.get('MOTO_PORT', '4580')}")
    parser.add_argument("--region", default=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    parser.add_argument("--wait", type=float, default=30.0,
                        help="seconds to wait for the server to answer /_standin/health (0: no wait)")
    args = parser.parse_args()
    wait_for_server(args.endpoint, args.wait)
    print(json.dumps(seed(args.endpoint, args.region)))


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
