"""Contract tests for the patched moto (tests/local-ecs/CONTRACT.md, "Patched moto").

Run: $STATE/venv/bin/python -m unittest discover -s tests/local-ecs/moto -v
Starts its own standin_moto.py on a free loopback port and stops it (SIGTERM) at the end.
Each test starts from /moto-api/reset plus seed.py's cluster `local` with one instance.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import seed  # noqa: E402

REGION = "us-east-1"
CI_MEMORY = 7482  # what moto gives every container instance
NO_RETRY = Config(retries={"total_max_attempts": 1})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StandinMotoTest(unittest.TestCase):
    server: subprocess.Popen
    endpoint: str

    @classmethod
    def setUpClass(cls) -> None:
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
        port = free_port()
        cls.endpoint = f"http://127.0.0.1:{port}"
        cls.log = tempfile.NamedTemporaryFile(prefix="standin-moto-", suffix=".log", delete=False)
        cls.server = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "standin_moto.py"), "--host", "127.0.0.1", "--port", str(port)],
            stdout=cls.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if cls.http("GET", "/_standin/health")[0] == 200:
                    break
            except OSError:
                pass
            if cls.server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"standin moto did not come up; log: {cls.log.name}")
            time.sleep(0.1)
        cls.ecs = boto3.client("ecs", endpoint_url=cls.endpoint, region_name=REGION, config=NO_RETRY)
        cls.ec2 = boto3.client("ec2", endpoint_url=cls.endpoint, region_name=REGION, config=NO_RETRY)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.terminate()  # SIGTERM
        try:
            rc = cls.server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            cls.server.kill()
            raise
        finally:
            cls.log.close()
        if rc != 0:
            raise AssertionError(f"server exited {rc} on SIGTERM; log: {cls.log.name}")
        os.unlink(cls.log.name)

    @classmethod
    def http(cls, method: str, path: str, body: object = None) -> tuple[int, object]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(cls.endpoint + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as err:
            raw, status = err.read(), err.code
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw

    def setUp(self) -> None:
        status, _ = self.http("POST", "/moto-api/reset")
        self.assertEqual(status, 200)
        self.seeded = seed.seed(self.endpoint, REGION, self.ecs, self.ec2)
        self.register("job", [
            {"name": "build", "image": "ecs-executor-test/build:1", "memory": 512, "essential": True},
            {"name": "helper", "image": "ecs-executor-test/helper:1", "memoryReservation": 256, "essential": False},
        ])

    # ---------------------------------------------------------------- helpers

    def register(self, family: str, containers: list[dict], **kw: object) -> str:
        return self.ecs.register_task_definition(family=family, containerDefinitions=containers, **kw)[
            "taskDefinition"]["taskDefinitionArn"]

    def run_one(self, family: str = "job", **kw: object) -> dict:
        resp = self.ecs.run_task(cluster="local", taskDefinition=family, **kw)
        self.assertEqual(resp["failures"], [])
        self.assertEqual(len(resp["tasks"]), 1)
        return resp["tasks"][0]

    def describe(self, arn: str, **kw: object) -> dict:
        resp = self.ecs.describe_tasks(cluster="local", tasks=[arn], **kw)
        self.assertEqual(resp["failures"], [])
        return resp["tasks"][0]

    def agent_running(self, arn: str) -> None:
        self.ecs.submit_task_state_change(
            cluster="local", task=arn, status="RUNNING",
            containers=[
                {"containerName": "build", "runtimeId": "rt-build", "status": "RUNNING"},
                {"containerName": "helper", "runtimeId": "rt-helper", "status": "RUNNING",
                 "networkBindings": [{"bindIP": "0.0.0.0", "containerPort": 80, "hostPort": 32768, "protocol": "tcp"}]},
            ],
            pullStartedAt=1700000000, pullStoppedAt=1700000005,
        )

    def agent_stopped(self, arn: str, reason: str, exit_codes: dict[str, int] | None = None) -> None:
        containers = [
            {"containerName": n, "status": "STOPPED", "exitCode": c} for n, c in (exit_codes or {}).items()
        ]
        self.ecs.submit_task_state_change(cluster="local", task=arn, status="STOPPED", reason=reason, containers=containers)

    def remaining_memory(self) -> int:
        ci = self.ecs.describe_container_instances(
            cluster="local", containerInstances=[self.seeded["container_instance_arn"]])["containerInstances"][0]
        return next(r["integerValue"] for r in ci["remainingResources"] if r["name"] == "MEMORY")

    def error_of(self, fn, **kw) -> ClientError:  # type: ignore[no-untyped-def]
        with self.assertRaises(ClientError) as cm:
            fn(**kw)
        return cm.exception

    # ---------------------------------------------------------------- seed

    def test_revisions_are_never_reused_after_delete(self) -> None:
        containers = [{"name": "c", "image": "busybox", "memory": 64}]
        first = self.register("gcfam", containers)
        self.assertTrue(first.endswith(":1"), first)
        self.ecs.deregister_task_definition(taskDefinition=first)
        deleted = self.ecs.delete_task_definitions(taskDefinitions=[first])
        self.assertEqual(deleted["failures"], [])
        second = self.register("gcfam", containers, tags=[{"key": "k", "value": "v"}])
        self.assertTrue(second.endswith(":2"), second)
        td = self.ecs.describe_task_definition(taskDefinition="gcfam", include=["TAGS"])
        self.assertEqual(td["taskDefinition"]["revision"], 2)
        self.assertEqual(td["taskDefinition"]["taskDefinitionArn"], second)
        self.assertEqual(td["tags"], [{"key": "k", "value": "v"}])
        self.assertTrue(self.register("gcfam", containers).endswith(":3"))

    def test_seed_is_idempotent_and_sets_ips(self) -> None:
        again = seed.seed(self.endpoint, REGION, self.ecs, self.ec2)
        self.assertEqual(again, self.seeded)
        self.assertEqual(len(self.ecs.list_container_instances(cluster="local")["containerInstanceArns"]), 1)
        inst = self.ec2.describe_instances(InstanceIds=[self.seeded["instance_id"]])["Reservations"][0]["Instances"][0]
        self.assertEqual((inst["PrivateIpAddress"], inst["PublicIpAddress"]), ("127.0.0.1", "127.0.0.2"))
        ci = self.ecs.describe_container_instances(
            cluster="local", containerInstances=[self.seeded["container_instance_arn"]])["containerInstances"][0]
        self.assertEqual(ci["ec2InstanceId"], self.seeded["instance_id"])

    # ---------------------------------------------------------------- tasks

    def test_run_task_stays_pending_with_one_container_per_definition(self) -> None:
        task = self.run_one(
            startedBy="runner-7", tags=[{"key": "job", "value": "42"}],
            overrides={"containerOverrides": [{"name": "build", "environment": [{"name": "A", "value": "1"}]}]},
        )
        arn = task["taskArn"]
        self.assertRegex(arn, r"^arn:aws:ecs:us-east-1:123456789012:task/local/[0-9a-f]{32}$")
        for _ in range(12):
            t = self.describe(arn)
            self.assertEqual((t["lastStatus"], t["desiredStatus"]), ("PENDING", "RUNNING"))
        self.assertEqual([c["name"] for c in t["containers"]], ["build", "helper"])
        for c in t["containers"]:
            self.assertEqual(c["lastStatus"], "PENDING")
            self.assertNotIn("exitCode", c)
            self.assertNotIn("runtimeId", c)
            self.assertEqual(c["taskArn"], arn)
        self.assertEqual(t["containerInstanceArn"], self.seeded["container_instance_arn"])
        self.assertEqual(t["startedBy"], "runner-7")
        self.assertEqual(t["launchType"], "EC2")
        self.assertEqual(t["overrides"]["containerOverrides"][0]["environment"], [{"name": "A", "value": "1"}])
        for key in ("startedAt", "stoppedAt", "stopCode", "stoppedReason"):
            self.assertNotIn(key, t)
        self.assertNotIn("tags", t)  # only with include=[TAGS], like ECS
        self.assertEqual(self.describe(arn, include=["TAGS"])["tags"], [{"key": "job", "value": "42"}])
        self.assertEqual(self.remaining_memory(), CI_MEMORY - 768)

    def test_agent_reports_running(self) -> None:
        arn = self.run_one()["taskArn"]
        self.agent_running(arn)
        t = self.describe(arn)
        self.assertEqual(t["lastStatus"], "RUNNING")
        self.assertIn("startedAt", t)
        self.assertIn("pullStartedAt", t)
        self.assertEqual({c["name"]: c["runtimeId"] for c in t["containers"]}, {"build": "rt-build", "helper": "rt-helper"})
        self.assertEqual({c["lastStatus"] for c in t["containers"]}, {"RUNNING"})
        helper = next(c for c in t["containers"] if c["name"] == "helper")
        self.assertEqual(helper["networkBindings"][0]["hostPort"], 32768)
        self.assertGreater(t["version"], 1)
        cluster = self.ecs.describe_clusters(clusters=["local"])["clusters"][0]
        self.assertEqual((cluster["runningTasksCount"], cluster["pendingTasksCount"]), (1, 0))

    def test_stop_task_then_agent_stopped_is_user_initiated(self) -> None:
        arn = self.run_one()["taskArn"]
        self.agent_running(arn)
        stopped = self.ecs.stop_task(cluster="local", task=arn, reason="job cancelled")["task"]
        self.assertEqual((stopped["desiredStatus"], stopped["lastStatus"]), ("STOPPED", "RUNNING"))
        self.assertEqual((stopped["stopCode"], stopped["stoppedReason"]), ("UserInitiated", "job cancelled"))
        again = self.ecs.stop_task(cluster="local", task=arn, reason="second")["task"]  # idempotent
        self.assertEqual(again["stoppedReason"], "job cancelled")
        self.assertEqual(self.remaining_memory(), CI_MEMORY - 768)  # held until the agent reports
        self.assertEqual(self.ecs.list_tasks(cluster="local")["taskArns"], [])  # desiredStatus STOPPED now

        self.agent_stopped(arn, "Essential container in task exited", {"build": 137, "helper": 137})
        t = self.describe(arn)
        self.assertEqual((t["lastStatus"], t["desiredStatus"]), ("STOPPED", "STOPPED"))
        self.assertEqual((t["stopCode"], t["stoppedReason"]), ("UserInitiated", "job cancelled"))
        self.assertIn("stoppedAt", t)
        self.assertEqual({c["exitCode"] for c in t["containers"]}, {137})
        self.assertEqual(self.remaining_memory(), CI_MEMORY)
        # StopTask on a stopped task returns it unchanged.
        self.assertEqual(self.ecs.stop_task(cluster="local", task=arn)["task"]["stopCode"], "UserInitiated")
        # A late report after STOPPED is acknowledged and ignored.
        self.agent_running(arn)
        self.assertEqual(self.describe(arn)["lastStatus"], "STOPPED")

    def test_stop_task_default_reason_and_pending_task(self) -> None:
        arn = self.run_one()["taskArn"]
        t = self.ecs.stop_task(cluster="local", task=arn)["task"]
        self.assertEqual((t["lastStatus"], t["stoppedReason"]), ("PENDING", "Task stopped by user"))

    def test_cannot_pull_is_task_failed_to_start(self) -> None:
        arn = self.run_one()["taskArn"]
        reason = "CannotPullContainerError: pull access denied for nope"
        self.ecs.submit_task_state_change(
            cluster="local", task=arn, status="STOPPED", reason=reason,
            containers=[{"containerName": "build", "status": "STOPPED", "reason": reason}],
        )
        t = self.describe(arn)
        self.assertEqual((t["lastStatus"], t["stopCode"], t["stoppedReason"]), ("STOPPED", "TaskFailedToStart", reason))
        self.assertNotIn("startedAt", t)
        self.assertEqual(self.remaining_memory(), CI_MEMORY)

    def test_essential_container_exit(self) -> None:
        arn = self.run_one()["taskArn"]
        self.agent_running(arn)
        ack = self.ecs.submit_container_state_change(
            cluster="local", task=arn, containerName="build", runtimeId="rt-build", status="STOPPED", exitCode=3,
            reason="exited")
        self.assertIn("acknowledgment", ack)
        t = self.describe(arn)
        self.assertEqual(t["lastStatus"], "RUNNING")  # a container report does not stop the task
        build = next(c for c in t["containers"] if c["name"] == "build")
        self.assertEqual((build["lastStatus"], build["exitCode"], build["reason"]), ("STOPPED", 3, "exited"))
        self.agent_stopped(arn, "Essential container in task exited", {"helper": 137})
        t = self.describe(arn)
        self.assertEqual((t["stopCode"], t["stoppedReason"]), ("EssentialContainerExited", "Essential container in task exited"))
        self.assertEqual({c["name"]: c["exitCode"] for c in t["containers"]}, {"build": 3, "helper": 137})
        self.assertIn("executionStoppedAt", t)

    def test_describe_unknown_is_missing(self) -> None:
        arn = self.run_one()["taskArn"]
        bogus_arn = "arn:aws:ecs:us-east-1:123456789012:task/local/0123456789abcdef0123456789abcdef"
        resp = self.ecs.describe_tasks(cluster="local", tasks=[arn, "deadbeef", bogus_arn])
        self.assertEqual([t["taskArn"] for t in resp["tasks"]], [arn])
        self.assertEqual(resp["failures"], [{"arn": "deadbeef", "reason": "MISSING"}, {"arn": bogus_arn, "reason": "MISSING"}])
        # By bare id works too.
        self.assertEqual(self.describe(arn.split("/")[-1])["taskArn"], arn)

    def test_unknown_task_and_cluster_errors(self) -> None:
        err = self.error_of(self.ecs.stop_task, cluster="local", task="0123456789abcdef0123456789abcdef")
        self.assertEqual(err.response["Error"], {"Code": "InvalidParameterException", "Message": "The referenced task was not found."})
        self.assertEqual(err.response["ResponseMetadata"]["HTTPStatusCode"], 400)
        err = self.error_of(self.ecs.run_task, cluster="nope", taskDefinition="job")
        self.assertEqual(err.response["Error"]["Code"], "ClusterNotFoundException")
        err = self.error_of(self.ecs.describe_tasks, cluster="nope", tasks=["x"])
        self.assertEqual(err.response["Error"]["Code"], "ClusterNotFoundException")

    def test_list_tasks_defaults_to_running_and_filters(self) -> None:
        self.register("other", [{"name": "x", "image": "ecs-executor-test/build:1", "memory": 64}])
        a = self.run_one(startedBy="alice")["taskArn"]
        b = self.run_one(startedBy="bob")["taskArn"]
        c = self.run_one("other", startedBy="alice")["taskArn"]
        self.agent_stopped(b, "Essential container in task exited")
        lt = self.ecs.list_tasks
        self.assertEqual(set(lt(cluster="local")["taskArns"]), {a, c})
        self.assertEqual(lt(cluster="local", desiredStatus="STOPPED")["taskArns"], [b])
        self.assertEqual(set(lt(cluster="local", startedBy="alice")["taskArns"]), {a, c})
        self.assertEqual(lt(cluster="local", family="other")["taskArns"], [c])
        ci = self.seeded["container_instance_arn"]
        self.assertEqual(set(lt(cluster="local", containerInstance=ci)["taskArns"]), {a, c})
        self.assertEqual(set(lt(cluster="local", containerInstance=ci.split("/")[-1])["taskArns"]), {a, c})

    def test_placement_failures_and_release(self) -> None:
        ci = self.seeded["container_instance_arn"]
        self.register("huge", [{"name": "x", "image": "i", "memory": CI_MEMORY + 1}])
        resp = self.ecs.run_task(cluster="local", taskDefinition="huge")
        self.assertEqual(resp["tasks"], [])
        self.assertEqual(resp["failures"], [{"arn": ci, "reason": "RESOURCE:MEMORY"}])
        self.register("cpu", [{"name": "x", "image": "i", "memory": 64, "cpu": 5000}])
        resp = self.ecs.run_task(cluster="local", taskDefinition="cpu")
        self.assertEqual(resp["failures"], [{"arn": ci, "reason": "RESOURCE:CPU"}])
        # Fill the instance, fail, free one task, fit again.
        self.register("half", [{"name": "x", "image": "i", "memoryReservation": 3000}])
        resp = self.ecs.run_task(cluster="local", taskDefinition="half", count=3)
        self.assertEqual(len(resp["tasks"]), 2)
        self.assertEqual(resp["failures"], [{"arn": ci, "reason": "RESOURCE:MEMORY"}])
        self.agent_stopped(resp["tasks"][0]["taskArn"], "Essential container in task exited")
        self.run_one("half")

    def test_no_container_instances_error(self) -> None:
        self.ecs.create_cluster(clusterName="empty")
        err = self.error_of(self.ecs.run_task, cluster="empty", taskDefinition="job")
        self.assertEqual(err.response["Error"], {
            "Code": "InvalidParameterException", "Message": "No Container Instances were found in your cluster."})
        self.assertEqual(err.response["ResponseMetadata"]["HTTPStatusCode"], 400)

    def test_client_token_makes_run_task_idempotent(self) -> None:
        first = self.run_one(clientToken="tok-1")["taskArn"]
        second = self.run_one(clientToken="tok-1")["taskArn"]
        third = self.run_one(clientToken="tok-2")["taskArn"]
        self.assertEqual(first, second)
        self.assertNotEqual(first, third)

    def test_unexpected_moto_error_is_ecs_server_exception(self) -> None:
        # moto raises a bare Exception here; the stand-in answers like ECS's 500.
        err = self.error_of(self.ecs.deregister_container_instance, cluster="local", containerInstance="nope")
        self.assertEqual(err.response["Error"]["Code"], "ServerException")
        self.assertEqual(err.response["ResponseMetadata"]["HTTPStatusCode"], 500)

    # ---------------------------------------------------------------- faults

    def test_fault_ecs_throttling_with_count(self) -> None:
        status, body = self.http("POST", "/_standin/faults", {
            "service": "ecs", "action": "ListClusters", "count": 2,
            "error": "ThrottlingException", "message": "Rate exceeded"})
        self.assertEqual(status, 200)
        fault_id = body["id"]
        for _ in range(2):
            err = self.error_of(self.ecs.list_clusters)
            self.assertEqual(err.response["Error"], {"Code": "ThrottlingException", "Message": "Rate exceeded"})
            self.assertEqual(err.response["ResponseMetadata"]["HTTPStatusCode"], 400)
            self.assertEqual(err.response["ResponseMetadata"]["HTTPHeaders"]["x-amzn-errortype"], "ThrottlingException")
        self.assertEqual(len(self.ecs.list_clusters()["clusterArns"]), 1)
        faults = self.http("GET", "/_standin/faults")[1]
        self.assertEqual([(f["id"], f["remaining"], f["hits"]) for f in faults], [(fault_id, 0, 2)])
        # Other actions were never affected.
        self.ecs.describe_clusters(clusters=["local"])

    def test_fault_raw_ecs_error_shape(self) -> None:
        self.http("POST", "/_standin/faults", {"service": "ecs", "action": "RunTask", "error": "ThrottlingException"})
        req = urllib.request.Request(self.endpoint + "/", data=b"{}", method="POST", headers={
            "X-Amz-Target": "AmazonEC2ContainerServiceV20141113.RunTask",
            "Content-Type": "application/x-amz-json-1.1",
            "Authorization": "AWS4-HMAC-SHA256 Credential=test/20240101/us-east-1/ecs/aws4_request, SignedHeaders=host, Signature=0",
        })
        with self.assertRaises(urllib.error.HTTPError) as cm:
            urllib.request.urlopen(req, timeout=5)
        self.assertEqual(cm.exception.code, 400)
        self.assertEqual(cm.exception.headers["x-amzn-ErrorType"], "ThrottlingException")
        self.assertEqual(json.loads(cm.exception.read()), {"__type": "ThrottlingException", "message": "ThrottlingException"})

    def test_fault_ec2_xml_errors(self) -> None:
        self.http("POST", "/_standin/faults", {"service": "ec2", "action": "DescribeInstances", "error": "RequestLimitExceeded",
                                               "message": "Request limit exceeded."})
        self.http("POST", "/_standin/faults", {"service": "ec2", "action": "DescribeInstances", "error": "InternalError"})
        err = self.error_of(self.ec2.describe_instances)
        self.assertEqual(err.response["Error"], {"Code": "RequestLimitExceeded", "Message": "Request limit exceeded."})
        self.assertEqual(err.response["ResponseMetadata"]["HTTPStatusCode"], 503)
        err = self.error_of(self.ec2.describe_instances)
        self.assertEqual(err.response["Error"]["Code"], "InternalError")
        self.assertEqual(err.response["ResponseMetadata"]["HTTPStatusCode"], 500)
        self.assertTrue(err.response["ResponseMetadata"]["RequestId"])
        self.ec2.describe_instances()

    def test_iam_refusals_come_in_each_services_protocol(self) -> None:
        iam = boto3.client("iam", endpoint_url=self.endpoint, region_name=REGION, config=NO_RETRY)
        iam.create_user(UserName="only-list")
        iam.put_user_policy(UserName="only-list", PolicyName="p", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": ["ecs:ListClusters"], "Resource": "*"}]}))
        key = iam.create_access_key(UserName="only-list")["AccessKey"]
        creds = dict(aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
        ecs = boto3.client("ecs", endpoint_url=self.endpoint, region_name=REGION, config=NO_RETRY, **creds)
        ec2 = boto3.client("ec2", endpoint_url=self.endpoint, region_name=REGION, config=NO_RETRY, **creds)
        nobody = dict(aws_access_key_id="AKIANOBODY0000000000", aws_secret_access_key="x")
        # IAM enforcement from now on (what INITIAL_NO_AUTH_ACTION_COUNT=0 does), off again after.
        req = urllib.request.Request(self.endpoint + "/moto-api/reset-auth", data=b"0", method="POST",
                                     headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(req, timeout=10).read()
        try:
            ecs.list_clusters()
            err = self.error_of(ecs.describe_clusters, clusters=["local"])
            self.assertEqual(err.response["Error"]["Code"], "AccessDeniedException")
            self.assertIn("is not authorized to perform: ecs:DescribeClusters because no identity-based policy "
                          "allows the ecs:DescribeClusters action", err.response["Error"]["Message"])
            self.assertEqual(err.response["ResponseMetadata"]["HTTPStatusCode"], 400)
            err = self.error_of(ec2.describe_instances)
            self.assertEqual(err.response["Error"]["Code"], "UnauthorizedOperation")
            self.assertTrue(err.response["Error"]["Message"].startswith("You are not authorized to perform this operation. "))
            self.assertIn("ec2:DescribeInstances", err.response["Error"]["Message"])
            self.assertEqual(err.response["ResponseMetadata"]["HTTPStatusCode"], 403)
            err = self.error_of(boto3.client("ecs", endpoint_url=self.endpoint, region_name=REGION,
                                             config=NO_RETRY, **nobody).list_clusters)
            self.assertEqual(err.response["Error"]["Code"], "UnrecognizedClientException")
            err = self.error_of(boto3.client("ec2", endpoint_url=self.endpoint, region_name=REGION,
                                             config=NO_RETRY, **nobody).describe_instances)
            self.assertEqual(err.response["Error"]["Code"], "AuthFailure")
            self.assertEqual(err.response["ResponseMetadata"]["HTTPStatusCode"], 401)
        finally:
            req = urllib.request.Request(self.endpoint + "/moto-api/reset-auth", data=b"inf", method="POST",
                                         headers={"Content-Type": "text/plain"})
            urllib.request.urlopen(req, timeout=10).read()

    def test_fault_delay_only_and_concurrency(self) -> None:
        self.http("POST", "/_standin/faults", {"service": "ecs", "action": "ListClusters", "delay_ms": 600})
        done = {}

        def slow() -> None:
            t0 = time.monotonic()
            done["arns"] = self.ecs.list_clusters()["clusterArns"]
            done["elapsed"] = time.monotonic() - t0

        th = threading.Thread(target=slow)
        th.start()
        time.sleep(0.1)
        t0 = time.monotonic()
        self.ecs.describe_clusters(clusters=["local"])  # not stuck behind the delayed call
        self.assertLess(time.monotonic() - t0, 0.4)
        th.join(5)
        self.assertGreaterEqual(done["elapsed"], 0.6)
        self.assertEqual(len(done["arns"]), 1)  # served after the delay
        t0 = time.monotonic()
        self.ecs.list_clusters()  # count 1: the next one is not delayed
        self.assertLess(time.monotonic() - t0, 0.4)

    def test_fault_match_on_body(self) -> None:
        self.http("POST", "/_standin/faults", {"service": "ecs", "action": "RunTask", "match": "needle-job",
                                               "error": "AccessDeniedException", "message": "no"})
        self.run_one(startedBy="hay")  # does not match, does not use up the fault
        err = self.error_of(self.ecs.run_task, cluster="local", taskDefinition="job", startedBy="needle-job")
        self.assertEqual(err.response["Error"]["Code"], "AccessDeniedException")
        self.run_one(startedBy="needle-job")  # count was 1

    def test_fault_delete_one_and_all(self) -> None:
        a = self.http("POST", "/_standin/faults", {"service": "ecs", "action": "ListClusters", "count": -1, "error": "ServerException"})[1]["id"]
        b = self.http("POST", "/_standin/faults", {"service": "ec2", "action": "DescribeVpcs", "error": "InternalError"})[1]["id"]
        for _ in range(3):  # count -1: unlimited
            self.assertEqual(self.error_of(self.ecs.list_clusters).response["ResponseMetadata"]["HTTPStatusCode"], 500)
        self.assertEqual(self.http("DELETE", f"/_standin/faults/{a}")[0], 200)
        self.assertEqual(self.http("DELETE", f"/_standin/faults/{a}")[0], 404)
        self.ecs.list_clusters()
        self.assertEqual([f["id"] for f in self.http("GET", "/_standin/faults")[1]], [b])
        self.http("DELETE", "/_standin/faults")
        self.assertEqual(self.http("GET", "/_standin/faults")[1], [])
        self.ec2.describe_vpcs()
        self.assertEqual(self.http("POST", "/_standin/faults", {"action": "X"})[0], 400)  # neither error nor delay

    def test_reset_clears_faults_and_recordings(self) -> None:
        self.http("POST", "/_standin/faults", {"service": "ecs", "action": "ListClusters", "error": "ThrottlingException"})
        self.assertTrue(self.http("GET", "/_standin/requests")[1]["requests"])
        self.http("POST", "/moto-api/reset")
        self.assertEqual(self.http("GET", "/_standin/faults")[1], [])
        self.assertEqual(self.http("GET", "/_standin/requests")[1]["requests"], [])
        self.assertEqual(self.ecs.list_clusters()["clusterArns"], [])  # moto state went too, no fault fired

    # ---------------------------------------------------------------- recording

    def test_request_recording_and_counts(self) -> None:
        start = self.http("GET", "/_standin/requests")[1]["next"]
        self.http("POST", "/_standin/faults", {"service": "ecs", "action": "DescribeTasks", "error": "ThrottlingException"})
        arn = self.run_one(startedBy="rec-me")["taskArn"]
        self.error_of(self.ecs.describe_tasks, cluster="local", tasks=[arn])
        self.describe(arn)
        self.ec2.describe_instances()
        got = self.http("GET", f"/_standin/requests?since={start}")[1]
        reqs = got["requests"]
        self.assertEqual([(r["service"], r["action"]) for r in reqs],
                         [("ecs", "RunTask"), ("ecs", "DescribeTasks"), ("ecs", "DescribeTasks"), ("ec2", "DescribeInstances")])
        self.assertEqual([r["seq"] for r in reqs], list(range(start + 1, start + 5)))
        self.assertEqual(got["next"], start + 4)
        self.assertIn("rec-me", reqs[0]["body"])
        self.assertEqual([r["status"] for r in reqs], [200, 400, 200, 200])
        self.assertIn("Action=DescribeInstances", reqs[3]["body"])
        self.assertIsInstance(reqs[0]["time"], float)
        counts = self.http("GET", f"/_standin/counts?since={start}")[1]
        self.assertEqual(counts, {"ecs:RunTask": 1, "ecs:DescribeTasks": 2, "ec2:DescribeInstances": 1})
        self.assertEqual(self.http("GET", f"/_standin/counts?since={start + 1}")[1]["ecs:DescribeTasks"], 2)
        self.assertEqual(self.http("DELETE", "/_standin/requests")[0], 200)
        self.assertEqual(self.http("GET", "/_standin/counts")[1], {})
        self.ecs.list_clusters()
        after = self.http("GET", "/_standin/requests")[1]["requests"]
        self.assertEqual([r["seq"] for r in after], [start + 5])  # seq keeps counting

    # ---------------------------------------------------------------- throttling

    def throttling(self, **spec: object) -> dict:
        status, state = self.http("POST", "/_standin/throttling", spec)
        self.assertEqual(status, 200, state)
        return state  # type: ignore[return-value]

    def test_throttling_is_off_by_default(self) -> None:
        state = self.http("GET", "/_standin/throttling")[1]
        self.assertFalse(state["enabled"])
        self.assertEqual(state["buckets"]["ecs:cluster-resource-read"]["burst"], 100)
        for _ in range(120):  # more than any bucket's burst
            self.ecs.list_tasks(cluster="local")
        self.assertEqual(self.http("GET", "/_standin/throttling")[1]["throttled"], {})

    def test_throttling_ecs_buckets_are_shared_per_category(self) -> None:
        state = self.throttling(enabled=True, scale=0.1)  # read: 10 burst, 2/s
        self.assertEqual(state["buckets"]["ecs:cluster-resource-read"], {
            "burst": 10.0, "rate": 2.0, "tokens": 10.0, "actions": [
                "DescribeContainerInstances", "DescribeTasks", "ListAttributes", "ListContainerInstances",
                "ListTasks"]})
        self.assertEqual(state["buckets"]["ecs:cluster-resource-modify"]["rate"], 4.0)
        self.assertEqual(state["buckets"]["ecs:task-definition-modify"]["burst"], 2.0)
        # No refill from here on, so that a slow machine cannot make this flaky.
        self.throttling(buckets={"ecs:cluster-resource-read": {"burst": 10, "rate": 0}})
        start = self.http("GET", "/_standin/requests")[1]["next"]
        arn = self.run_one()["taskArn"]  # modify bucket: not the read one
        for _ in range(5):
            self.ecs.list_tasks(cluster="local")
        for _ in range(5):
            self.describe(arn)
        ci = self.seeded["container_instance_arn"]
        err = self.error_of(self.ecs.describe_container_instances, cluster="local", containerInstances=[ci])
        self.assertEqual(err.response["Error"], {"Code": "ThrottlingException", "Message": "Rate exceeded"})
        self.assertEqual(err.response["ResponseMetadata"]["HTTPStatusCode"], 400)
        self.assertTrue(err.response["ResponseMetadata"]["HTTPHeaders"]["x-amzn-errortype"].startswith(
            "ThrottlingException:"))
        self.assertEqual(self.error_of(self.ecs.list_tasks, cluster="local").response["Error"]["Code"],
                         "ThrottlingException")
        self.ecs.stop_task(cluster="local", task=arn)  # other category, still served
        self.ecs.list_clusters()  # cluster-read: its own bucket
        state = self.http("GET", "/_standin/throttling")[1]
        self.assertEqual(state["throttled"], {"ecs:DescribeContainerInstances": 1, "ecs:ListTasks": 1})
        self.assertEqual(state["allowed"]["ecs:ListTasks"], 5)
        self.assertEqual(state["allowed"]["ecs:RunTask"], 1)
        reqs = self.http("GET", f"/_standin/requests?since={start}")[1]["requests"]
        throttled = [(r["action"], r["status"], r["throttled"]) for r in reqs if r.get("throttled")]
        self.assertEqual(throttled, [("DescribeContainerInstances", 400, "ecs:cluster-resource-read"),
                                     ("ListTasks", 400, "ecs:cluster-resource-read")])
        # Refill: 1 token per second.
        self.throttling(buckets={"ecs:cluster-resource-read": {"burst": 1, "rate": 1}})
        self.ecs.list_tasks(cluster="local")
        self.assertEqual(self.error_of(self.ecs.list_tasks, cluster="local").response["Error"]["Code"],
                         "ThrottlingException")
        time.sleep(1.1)
        self.ecs.list_tasks(cluster="local")
        # Off again: served at once.
        self.throttling(enabled=False)
        for _ in range(20):
            self.ecs.list_tasks(cluster="local")

    def test_throttling_bucket_holds_under_concurrency(self) -> None:
        self.throttling(enabled=True, buckets={"ecs:cluster-resource-modify": {"burst": 10, "rate": 0}})
        self.register("tiny", [{"name": "x", "image": "i", "memoryReservation": 1}])
        results: list[str] = []

        def one() -> None:
            client = boto3.client("ecs", endpoint_url=self.endpoint, region_name=REGION, config=NO_RETRY)
            try:
                client.run_task(cluster="local", taskDefinition="tiny")
                results.append("ok")
            except ClientError as exc:
                results.append(exc.response["Error"]["Code"])

        threads = [threading.Thread(target=one) for _ in range(30)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(30)
        self.assertEqual(sorted(results).count("ok"), 10)
        self.assertEqual(results.count("ThrottlingException"), 20)
        self.assertEqual(len(self.ecs.list_tasks(cluster="local")["taskArns"]), 10)

    def test_throttling_exempts_the_agent_and_takes_overrides(self) -> None:
        self.throttling(enabled=True, buckets={"ecs:cluster-resource-read": {"burst": 2, "rate": 0}})
        agent = boto3.client("ecs", endpoint_url=self.endpoint, region_name=REGION,
                             config=Config(retries={"total_max_attempts": 1}, user_agent_appid="ecs-agent-standin"))
        for _ in range(2):
            self.ecs.list_tasks(cluster="local")
        self.assertEqual(self.error_of(self.ecs.list_tasks, cluster="local").response["Error"]["Code"],
                         "ThrottlingException")
        for _ in range(5):
            agent.list_tasks(cluster="local")  # the agent's polling never counts
        state = self.http("GET", "/_standin/throttling")[1]
        self.assertEqual(state["exempt_calls"], 5)
        self.assertEqual(state["buckets"]["ecs:cluster-resource-read"]["rate"], 0.0)
        self.assertEqual(self.http("POST", "/_standin/throttling", {"scale": 0})[0], 400)
        self.assertEqual(self.http("POST", "/_standin/throttling", {"bogus": 1})[0], 400)
        # Reset restores the defaults (off).
        self.http("POST", "/moto-api/reset")
        self.assertFalse(self.http("GET", "/_standin/throttling")[1]["enabled"])

    def test_throttling_ec2_describe_instances(self) -> None:
        self.throttling(enabled=True)
        iid = self.seeded["instance_id"]
        self.ec2.describe_instances(InstanceIds=[iid])
        self.ec2.describe_instances()
        buckets = self.http("GET", "/_standin/throttling")[1]["buckets"]
        self.assertEqual((buckets["ec2:DescribeInstances"]["burst"], buckets["ec2:DescribeInstances"]["rate"]), (100, 20))
        unfiltered = buckets["ec2:DescribeInstances:unfiltered"]
        self.assertEqual((unfiltered["burst"], unfiltered["rate"]), (50, 10))
        self.throttling(buckets={"ec2:DescribeInstances": {"burst": 5, "rate": 0},
                                 "ec2:DescribeInstances:unfiltered": {"burst": 2, "rate": 0}})
        for _ in range(5):
            self.ec2.describe_instances(InstanceIds=[iid])
        err = self.error_of(self.ec2.describe_instances, InstanceIds=[iid])
        self.assertEqual(err.response["Error"], {"Code": "RequestLimitExceeded", "Message": "Request limit exceeded."})
        self.assertEqual(err.response["ResponseMetadata"]["HTTPStatusCode"], 503)
        for _ in range(2):  # the unfiltered bucket is another one
            self.ec2.describe_instances()
        self.assertEqual(self.error_of(self.ec2.describe_instances).response["Error"]["Code"], "RequestLimitExceeded")
        self.ec2.describe_vpcs()  # EC2 throttles per action: another bucket
        state = self.http("GET", "/_standin/throttling")[1]
        self.assertEqual(state["throttled"], {"ec2:DescribeInstances": 2})

    # ---------------------------------------------------------------- several instances

    def reseed(self, **kw: object) -> dict:
        """setUp's state, but seeded with seed.seed(**kw) (e.g. instances=3)."""
        self.http("POST", "/moto-api/reset")
        self.seeded = seed.seed(self.endpoint, REGION, self.ecs, self.ec2, **kw)  # type: ignore[arg-type]
        self.register("job", [
            {"name": "build", "image": "ecs-executor-test/build:1", "memory": 512, "essential": True},
            {"name": "helper", "image": "ecs-executor-test/helper:1", "memoryReservation": 256, "essential": False},
        ])
        return self.seeded

    def test_seed_three_instances_with_addresses_resources_and_attributes(self) -> None:
        out = self.reseed(instances=3, cpu=2048, memory=3000)
        self.assertEqual(seed.seed(self.endpoint, REGION, self.ecs, self.ec2, instances=3, cpu=2048, memory=3000), out)
        self.assertEqual([(i["private_ip"], i["public_ip"]) for i in out["instances"]],
                         [("127.0.0.1", "127.0.0.2"), ("127.0.0.3", "127.0.0.4"), ("127.0.0.5", "127.0.0.6")])
        self.assertEqual(out["instances"][0]["container_instance_arn"], out["container_instance_arn"])
        arns = self.ecs.list_container_instances(cluster="local")["containerInstanceArns"]
        self.assertEqual(arns, [i["container_instance_arn"] for i in out["instances"]])
        cis = self.ecs.describe_container_instances(cluster="local", containerInstances=arns)["containerInstances"]
        zones = []
        for ci, info in zip(cis, out["instances"]):
            attrs = {a["name"]: a.get("value") for a in ci["attributes"]}
            self.assertIn(attrs["ecs.cpu-architecture"], ("x86_64", "arm64"))
            zones.append(attrs["ecs.availability-zone"])
            reg = {r["name"]: r.get("integerValue") for r in ci["registeredResources"]}
            self.assertEqual((reg["CPU"], reg["MEMORY"]), (2048, 3000))
            inst = self.ec2.describe_instances(InstanceIds=[ci["ec2InstanceId"]])["Reservations"][0]["Instances"][0]
            self.assertEqual((inst["PrivateIpAddress"], inst["PublicIpAddress"]), (info["private_ip"], info["public_ip"]))
            self.assertEqual(inst["Placement"]["AvailabilityZone"], attrs["ecs.availability-zone"])
        self.assertEqual(zones, ["us-east-1a", "us-east-1b", "us-east-1c"])

    def test_placement_by_memory_across_instances_and_release(self) -> None:
        out = self.reseed(instances=3, memory=1024)
        arns = [i["container_instance_arn"] for i in out["instances"]]
        self.register("m600", [{"name": "x", "image": "i", "memoryReservation": 600}])
        placed = [self.run_one("m600") for _ in range(3)]
        self.assertEqual([t["containerInstanceArn"] for t in placed], arns)  # one per instance
        resp = self.ecs.run_task(cluster="local", taskDefinition="m600")
        self.assertEqual(resp["tasks"], [])
        self.assertEqual(resp["failures"], [{"arn": a, "reason": "RESOURCE:MEMORY"} for a in arns])
        self.agent_stopped(placed[1]["taskArn"], "Essential container in task exited")
        self.assertEqual(self.run_one("m600")["containerInstanceArn"], arns[1])

    def test_placement_by_task_level_cpu(self) -> None:
        out = self.reseed(instances=3, cpu=1024)
        self.register("c1024", [{"name": "x", "image": "i", "memoryReservation": 64}], cpu="1024", memory="128")
        for _ in range(3):
            self.run_one("c1024")
        resp = self.ecs.run_task(cluster="local", taskDefinition="c1024")
        self.assertEqual({f["reason"] for f in resp["failures"]}, {"RESOURCE:CPU"})
        self.assertEqual(len(resp["failures"]), 3)
        info = self.http("GET", f"/_standin/instances/{out['instances'][2]['container_instance_id']}")[1]
        self.assertEqual((info["remaining_cpu"], info["pending_tasks"]), (0, 1))

    def test_placement_strategy_and_member_of(self) -> None:
        self.reseed(instances=2)
        status, arm = self.http("POST", "/_standin/instances", {"cluster": "local", "arch": "arm64", "memory": 2048})
        self.assertEqual(status, 200, arm)
        self.assertEqual((arm["private_ip"], arm["public_ip"], arm["cpu_architecture"]), ("127.0.0.5", "127.0.0.6", "arm64"))
        self.register("armonly", [{"name": "x", "image": "i", "memoryReservation": 64}],
                      placementConstraints=[{"type": "memberOf", "expression": "attribute:ecs.cpu-architecture == arm64"}])
        self.assertEqual(self.run_one("armonly")["containerInstanceArn"], arm["container_instance_arn"])
        self.register("nowhere", [{"name": "x", "image": "i", "memoryReservation": 64}],
                      placementConstraints=[{"type": "memberOf",
                                             "expression": "attribute:ecs.availability-zone in [eu-west-1a, eu-west-1b]"}])
        resp = self.ecs.run_task(cluster="local", taskDefinition="nowhere")
        self.assertEqual({f["reason"] for f in resp["failures"]}, {"MemberOf placement constraint unsatisfied."})
        # binpack on memory: the smallest remaining memory first (the arm64 one, 2048 MiB).
        t = self.run_one("job", placementStrategy=[{"type": "binpack", "field": "memory"}])
        self.assertEqual(t["containerInstanceArn"], arm["container_instance_arn"])
        # spread over instances: those with no task first (ties in registration order).
        spread = [{"type": "spread", "field": "instanceId"}]
        first = self.run_one("job", placementStrategy=spread)["containerInstanceArn"]
        second = self.run_one("job", placementStrategy=spread)["containerInstanceArn"]
        self.assertEqual(first, self.seeded["container_instance_arn"])
        self.assertEqual(second, self.seeded["instances"][1]["container_instance_arn"])
        # spread over zones, per task group: m64's first three land in three zones.
        self.register("m64", [{"name": "x", "image": "i", "memoryReservation": 64}])
        zones = [self.run_one("m64", placementStrategy=[{"type": "spread", "field": "attribute:ecs.availability-zone"}])
                 ["containerInstanceArn"] for _ in range(3)]
        self.assertEqual(len(set(zones)), 3)
        err = self.error_of(self.ecs.run_task, cluster="local", taskDefinition="job",
                            placementConstraints=[{"type": "memberOf", "expression": "nonsense"}])
        self.assertEqual(err.response["Error"]["Code"], "InvalidParameterException")
        # ListContainerInstances applies its filter (the executor asks for an architecture).
        listed = self.ecs.list_container_instances(cluster="local", filter="attribute:ecs.cpu-architecture == arm64")
        self.assertEqual(listed["containerInstanceArns"], [arm["container_instance_arn"]])
        everyone = self.ecs.list_container_instances(cluster="local")["containerInstanceArns"]
        self.assertEqual(len(everyone), 3)
        self.assertEqual(self.ecs.list_container_instances(
            cluster="local", filter="attribute:ecs.cpu-architecture == riscv64")["containerInstanceArns"], [])

    def test_member_of_expressions_and_distinct_instance(self) -> None:
        out = self.reseed(instances=3)
        a, b, c = (i["container_instance_arn"] for i in out["instances"])
        self.register("m", [{"name": "x", "image": "i", "memoryReservation": 64}])

        def where(expression: str) -> str | None:
            resp = self.ecs.run_task(cluster="local", taskDefinition="m",
                                     placementConstraints=[{"type": "memberOf", "expression": expression}])
            return resp["tasks"][0]["containerInstanceArn"] if resp["tasks"] else None

        self.assertEqual(where("attribute:ecs.availability-zone in [us-east-1b, us-east-1c]"), b)
        self.assertEqual(where("attribute:ecs.availability-zone not_in [us-east-1a, us-east-1b]"), c)
        self.assertEqual(where("attribute:ecs.instance-type =~ c5.* and attribute:ecs.availability-zone != us-east-1b"), c)
        self.assertEqual(where(f"ec2InstanceId == {out['instances'][1]['instance_id']}"), b)
        self.assertEqual(where("attribute:nope exists or attribute:ecs.availability-zone == us-east-1a"), a)
        self.assertEqual(where("(attribute:ecs.os-type == linux)"), a)
        self.assertIsNone(where("attribute:nope exists"))
        # distinctInstance: one task of a group per instance.
        self.register("solo", [{"name": "x", "image": "i", "memoryReservation": 64}],
                      placementConstraints=[{"type": "distinctInstance"}])
        placed = [self.run_one("solo")["containerInstanceArn"] for _ in range(3)]
        self.assertEqual(placed, [a, b, c])
        resp = self.ecs.run_task(cluster="local", taskDefinition="solo")
        self.assertEqual({f["reason"] for f in resp["failures"]}, {"DistinctInstance placement constraint unsatisfied."})

    # ---------------------------------------------------------------- capacity provider

    def capacity_provider(self, name: str = "cp", managed: str = "ENABLED", **scaling: object) -> None:
        self.ecs.create_capacity_provider(name=name, autoScalingGroupProvider={
            "autoScalingGroupArn": f"arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:x:autoScalingGroupName/{name}",
            "managedScaling": {"status": managed, "targetCapacity": 100, "maximumScalingStepSize": 2},
        })
        self.ecs.put_cluster_capacity_providers(cluster="local", capacityProviders=[name],
                                                defaultCapacityProviderStrategy=[])
        spec = {"scale_out_delay_s": 0.4, "warmup_s": 0, "instance": {"cpu": 1024, "memory": 1024}, **scaling}
        status, body = self.http("POST", "/_standin/scaling", spec)
        self.assertEqual(status, 200, body)

    def wait_for(self, what: str, fn, timeout: float = 10.0):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while True:
            value = fn()
            if value:
                return value
            if time.monotonic() > deadline:
                self.fail(f"timed out waiting for {what}")
            time.sleep(0.05)

    def events(self, since: int = 0) -> list[dict]:
        return self.http("GET", f"/_standin/scale-events?since={since}")[1]["events"]  # type: ignore[index]

    def test_capacity_provider_scale_out_places_a_provisioning_task(self) -> None:
        self.capacity_provider()
        self.register("m800", [{"name": "x", "image": "i", "memoryReservation": 800}])
        strategy = [{"capacityProvider": "cp", "weight": 1}]
        # Two at once (one call, so that both wait before the ticker looks): two 1024 MiB
        # instances are needed, one scaling step of 2 (maximumScalingStepSize).
        resp = self.ecs.run_task(cluster="local", taskDefinition="m800", capacityProviderStrategy=strategy, count=2)
        self.assertEqual(resp["failures"], [])
        task, second = resp["tasks"]
        for t in (task, second):
            self.assertEqual((t["lastStatus"], t["desiredStatus"]), ("PROVISIONING", "RUNNING"))
            self.assertEqual(t["capacityProviderName"], "cp")
            self.assertNotIn("containerInstanceArn", t)
        self.assertIn(second["taskArn"], self.ecs.list_tasks(cluster="local")["taskArns"])  # desired RUNNING
        registered = self.wait_for("two registrations", lambda: [
            e for e in self.events() if e["type"] == "instance-registered"][1:] and
            [e for e in self.events() if e["type"] == "instance-registered"])
        kinds = [e["type"] for e in self.events()]
        self.assertEqual(kinds[0], "scale-out")
        self.assertEqual(self.events()[0]["count"], 2)
        self.assertEqual([(e["private_ip"], e["public_ip"]) for e in registered],
                         [("127.0.0.3", "127.0.0.4"), ("127.0.0.5", "127.0.0.6")])
        self.assertEqual({e["capacity_provider"] for e in registered}, {"cp"})
        arns = self.ecs.list_container_instances(cluster="local")["containerInstanceArns"]
        self.assertEqual(arns[1:], [e["container_instance_arn"] for e in registered])
        ci = self.ecs.describe_container_instances(cluster="local", containerInstances=arns[1:2])["containerInstances"][0]
        self.assertEqual(ci["capacityProviderName"], "cp")
        self.assertEqual(ci["status"], "ACTIVE")
        placed = self.wait_for("placement", lambda: [
            t for t in self.ecs.describe_tasks(cluster="local", tasks=[task["taskArn"], second["taskArn"]])["tasks"]
            if t["lastStatus"] == "PENDING"][1:] and self.ecs.describe_tasks(
                cluster="local", tasks=[task["taskArn"], second["taskArn"]])["tasks"])
        self.assertEqual({t["containerInstanceArn"] for t in placed}, set(arns[1:]))
        inst = self.ec2.describe_instances(InstanceIds=[registered[0]["instance_id"]])["Reservations"][0]["Instances"][0]
        self.assertEqual(inst["PrivateIpAddress"], "127.0.0.3")
        # The agent picks it up as on any instance.
        self.agent_running_one(placed[0]["taskArn"])
        self.assertEqual(self.describe(placed[0]["taskArn"])["lastStatus"], "RUNNING")

    def agent_running_one(self, arn: str) -> None:
        self.ecs.submit_task_state_change(cluster="local", task=arn, status="RUNNING",
                                          containers=[{"containerName": "x", "runtimeId": "rt", "status": "RUNNING"}])

    def test_capacity_provider_without_managed_scaling_fails_at_once(self) -> None:
        self.capacity_provider(managed="DISABLED")
        err = self.error_of(self.ecs.run_task, cluster="local", taskDefinition="job",
                            capacityProviderStrategy=[{"capacityProvider": "cp", "weight": 1}])
        self.assertEqual(err.response["Error"]["Message"], "No Container Instances were found in your cluster.")
        self.http("POST", "/_standin/instances", {"cluster": "local", "capacity_provider": "cp", "memory": 256})
        resp = self.ecs.run_task(cluster="local", taskDefinition="job",
                                 capacityProviderStrategy=[{"capacityProvider": "cp", "weight": 1}])
        self.assertEqual([f["reason"] for f in resp["failures"]], ["RESOURCE:MEMORY"])

    def test_provisioning_task_times_out_with_ecs_reason(self) -> None:
        self.capacity_provider(max_size=0, provisioning_timeout_s=0.5)
        arn = self.ecs.run_task(cluster="local", taskDefinition="job",
                                capacityProviderStrategy=[{"capacityProvider": "cp"}])["tasks"][0]["taskArn"]
        t = self.wait_for("the timeout", lambda: (d := self.describe(arn))["lastStatus"] == "STOPPED" and d)
        self.assertEqual((t["desiredStatus"], t["stopCode"], t["stoppedReason"]),
                         ("STOPPED", "TaskFailedToStart", "EMPTY CAPACITY PROVIDER"))
        self.assertIn("stoppedAt", t)
        self.assertEqual([e["type"] for e in self.events()], ["provisioning-timeout"])

    def test_stop_task_while_provisioning_and_quota(self) -> None:
        self.capacity_provider(max_size=0, provisioning_quota=2)
        cps = [{"capacityProvider": "cp"}]
        a = self.ecs.run_task(cluster="local", taskDefinition="job", capacityProviderStrategy=cps)["tasks"][0]["taskArn"]
        self.ecs.run_task(cluster="local", taskDefinition="job", capacityProviderStrategy=cps)
        err = self.error_of(self.ecs.run_task, cluster="local", taskDefinition="job", capacityProviderStrategy=cps)
        self.assertEqual(err.response["Error"]["Code"], "ClientException")
        stopped = self.ecs.stop_task(cluster="local", task=a, reason="job cancelled")["task"]
        self.assertEqual((stopped["lastStatus"], stopped["stopCode"], stopped["stoppedReason"]),
                         ("STOPPED", "UserInitiated", "job cancelled"))
        self.ecs.run_task(cluster="local", taskDefinition="job", capacityProviderStrategy=cps)  # room again

    def test_scale_in_after_idle(self) -> None:
        self.capacity_provider(scale_in_idle_s=0.5)
        arn = self.ecs.run_task(cluster="local", taskDefinition="job",
                                capacityProviderStrategy=[{"capacityProvider": "cp"}])["tasks"][0]["taskArn"]
        self.wait_for("placement", lambda: self.describe(arn)["lastStatus"] == "PENDING")
        time.sleep(0.8)  # busy: not scaled in
        self.assertEqual(len(self.ecs.list_container_instances(cluster="local")["containerInstanceArns"]), 2)
        self.agent_stopped(arn, "Essential container in task exited")
        ev = self.wait_for("scale-in", lambda: [e for e in self.events() if e["type"] == "scale-in"])[0]
        self.assertEqual(ev["private_ip"], "127.0.0.3")
        self.assertEqual(self.ecs.list_container_instances(cluster="local")["containerInstanceArns"],
                         [self.seeded["container_instance_arn"]])  # the seeded one is not the provider's
        ci = self.ecs.describe_container_instances(
            cluster="local", containerInstances=[ev["container_instance_arn"]])["containerInstances"][0]
        self.assertEqual(ci["status"], "INACTIVE")
        inst = self.ec2.describe_instances(InstanceIds=[ev["instance_id"]])["Reservations"][0]["Instances"][0]
        self.assertEqual(inst["State"]["Name"], "terminated")
        # The freed address pair is the next scale-out's.
        self.ecs.run_task(cluster="local", taskDefinition="job", capacityProviderStrategy=[{"capacityProvider": "cp"}])
        again = self.wait_for("re-registration", lambda: [
            e for e in self.events() if e["type"] == "instance-registered"][1:])[0]
        self.assertEqual(again["private_ip"], "127.0.0.3")

    # ---------------------------------------------------------------- instance loss

    def test_spot_interruption_stops_the_instances_tasks(self) -> None:
        out = self.reseed(instances=2)
        victim = out["instances"][1]
        self.register("m", [{"name": "x", "image": "i", "memoryReservation": 64}])
        arn = self.run_one("m", placementConstraints=[
            {"type": "memberOf", "expression": f"ec2InstanceId == {victim['instance_id']}"}])["taskArn"]
        self.agent_running_one(arn)
        status, info = self.http("POST", f"/_standin/instances/{victim['container_instance_id']}",
                                 {"lost": "spot", "notice_s": 2.0})
        self.assertEqual((status, info["status"]), (200, "DRAINING"))
        self.assertEqual(self.describe(arn)["lastStatus"], "RUNNING")  # the notice alone stops nothing
        # DRAINING: no new tasks there.
        t = self.run_one("m", placementStrategy=[{"type": "spread", "field": "instanceId"}])
        self.assertEqual(t["containerInstanceArn"], out["container_instance_arn"])
        t = self.wait_for("the termination", lambda: (d := self.describe(arn))["lastStatus"] == "STOPPED" and d)
        self.assertEqual((t["desiredStatus"], t["stopCode"], t["stoppedReason"]),
                         ("STOPPED", "TerminationNotice", f"Host EC2 (instance {victim['instance_id']}) terminated."))
        self.assertEqual({c["lastStatus"] for c in t["containers"]}, {"STOPPED"})
        self.assertNotIn(victim["container_instance_arn"],
                         self.ecs.list_container_instances(cluster="local")["containerInstanceArns"])
        ci = self.ecs.describe_container_instances(
            cluster="local", containerInstances=[victim["container_instance_arn"]])["containerInstances"][0]
        self.assertEqual((ci["status"], ci["agentConnected"]), ("INACTIVE", False))
        self.assertEqual([e["type"] for e in self.events()],
                         ["instance-registered", "spot-interruption-notice", "instance-terminated"])
        gone = self.events()[-1]
        self.assertEqual((gone["cause"], gone["stopped_tasks"], gone["private_ip"]), ("spot", [arn], "127.0.0.3"))
        # A late report from the dead instance's agent changes nothing.
        self.agent_stopped(arn, "Essential container in task exited")
        self.assertEqual(self.describe(arn)["stopCode"], "TerminationNotice")

    def test_draining_keeps_standalone_tasks_until_the_instance_goes(self) -> None:
        ci_id = self.seeded["container_instance_arn"].split("/")[-1]
        arn = self.run_one()["taskArn"]
        self.agent_running(arn)
        status, info = self.http("POST", f"/_standin/instances/{ci_id}", {"state": "DRAINING"})
        self.assertEqual((status, info["status"]), (200, "DRAINING"))
        time.sleep(0.3)
        self.assertEqual(self.describe(arn)["lastStatus"], "RUNNING")  # as ECS: not a service task
        err = self.error_of(self.ecs.run_task, cluster="local", taskDefinition="job")  # nothing ACTIVE
        self.assertEqual(err.response["Error"]["Message"], "No Container Instances were found in your cluster.")
        self.http("POST", f"/_standin/instances/{ci_id}", {"state": "ACTIVE"})
        self.run_one()
        self.http("POST", f"/_standin/instances/{self.seeded['instance_id']}",
                  {"state": "DRAINING", "terminate_after_s": 0.3})
        t = self.wait_for("the termination", lambda: (d := self.describe(arn))["lastStatus"] == "STOPPED" and d)
        self.assertEqual(t["stopCode"], "TerminationNotice")
        self.assertEqual(self.http("POST", f"/_standin/instances/{ci_id}", {"state": "ACTIVE"})[0], 400)  # INACTIVE
        self.assertEqual(self.http("POST", "/_standin/instances/nope", {"state": "ACTIVE"})[0], 404)

    def test_lost_terminated_keeps_a_stop_task_reason(self) -> None:
        arn = self.run_one()["taskArn"]
        other = self.run_one()["taskArn"]
        self.ecs.stop_task(cluster="local", task=arn, reason="job cancelled")
        self.http("POST", f"/_standin/instances/{self.seeded['instance_id']}", {"lost": "terminated"})
        self.assertEqual((self.describe(arn)["stopCode"], self.describe(arn)["stoppedReason"]),
                         ("UserInitiated", "job cancelled"))
        self.assertEqual(self.describe(other)["stopCode"], "TerminationNotice")
        self.assertEqual(self.http("GET", "/_standin/instances")[1]["instances"][0]["status"], "INACTIVE")


if __name__ == "__main__":
    unittest.main()
