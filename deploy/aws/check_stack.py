"""Deploys deploy/aws/parlor.yaml to a local emulator that speaks CloudFormation (ministack),
checks that what it created has the template's settings, and deletes it again.

    python deploy/aws/check_stack.py --endpoint http://127.0.0.1:4566 [--template FILE]

Run by scripts/aws-template-check. Every name is unique to the run (the emulator is shared:
never reset it). Prints one summary line on success; on failure, every failed check and
exits 1. What the emulator accepts but does not apply is listed as a gap, not a failure:
the check then verifies the template asks for it.
"""

import argparse
import io
import json
import sys
import time
import uuid
import zipfile

import boto3
import yaml

REGION = "us-east-1"

# The tables as /tmp/aws-design.md (crates/parlor-aws) lists them: key schema
# [(name, type, HASH|RANGE)], GSIs {name: [(name, type, key type)]}, the TTL attribute, and
# whether it holds data (retained, deletion protection, point-in-time recovery).
TABLES = {
    "users": ([("id", "S", "HASH")], {}, None, True),
    "usernames": ([("first", "S", "HASH"), ("name", "S", "RANGE")], {}, None, True),
    "sessions": ([("token", "B", "HASH")], {}, "ttl", True),
    "conversations": ([("id", "S", "HASH")], {}, None, True),
    "direct_pairs": ([("pair", "S", "HASH")], {}, None, True),
    "members": (
        [("conversation_id", "S", "HASH"), ("user_id", "S", "RANGE")],
        {"by_user": ([("user_id", "S", "HASH"), ("conversation_id", "S", "RANGE")], "KEYS_ONLY")},
        None,
        True,
    ),
    "events": ([("conversation_id", "S", "HASH"), ("seq", "N", "RANGE")], {}, None, True),
    "requests": ([("key", "S", "HASH")], {}, None, True),
    "files": (
        [("id", "S", "HASH")],
        {"unattached": ([("unattached", "S", "HASH"), ("created_at", "N", "RANGE")], "KEYS_ONLY")},
        None,
        True,
    ),
    "blobs": (
        [("key", "S", "HASH")],
        {"idle": ([("idle", "S", "HASH"), ("idle_since", "N", "RANGE")], ("INCLUDE", ["refs"]))},
        None,
        True,
    ),
    # The registry's (crates/parlor-aws/src/registry/tables.rs).
    "connections": (
        [("user_id", "S", "HASH"), ("sk", "S", "RANGE")],
        {"by_node": ([("node_id", "S", "HASH")], "KEYS_ONLY")},
        "ttl",
        False,
    ),
    "nodes": ([("node_id", "S", "HASH")], {}, "ttl", False),
}

# Parameters the check deploys with besides the network and the code (the rest: defaults).
MAX_RECEIVE = 4
LAMBDA_TIMEOUT = 10
VISIBILITY = 60  # six times LAMBDA_TIMEOUT (the template's mapping)
MAX_CONCURRENCY = 3
RESERVED = 5
ORIGIN = "https://chat.example.com"
EMAIL = "alarms@example.com"


class Checks:
    def __init__(self):
        self.failures = []
        self.gaps = []
        self.count = 0

    def eq(self, what, got, want):
        self.count += 1
        if got != want:
            self.failures.append(f"{what}: got {got!r}, want {want!r}")

    def true(self, what, ok):
        self.count += 1
        if not ok:
            self.failures.append(what)

    def gap(self, what):
        if what not in self.gaps:
            self.gaps.append(what)


class CfnLoader(yaml.SafeLoader):
    """Reads a template's short-form functions (!Ref, !Sub, …) as plain values."""


def _any_tag(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {"Fn::" + suffix if suffix not in ("Ref", "Condition") else suffix: value}


CfnLoader.add_multi_constructor("!", _any_tag)


def client(name, endpoint):
    return boto3.client(
        name,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def placeholder_zip():
    """A `bootstrap` that is never run: the check sends no messages (the real binary is
    tested end to end elsewhere)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo("bootstrap")
        info.external_attr = 0o755 << 16
        archive.writestr(info, "#!/bin/sh\necho 'placeholder: not the Parlor persister' >&2\nexit 1\n")
    return buffer.getvalue()


def wait_stack(cfn, name, timeout=180):
    deadline = time.time() + timeout
    while True:
        try:
            stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
        except cfn.exceptions.ClientError as error:
            if "does not exist" in str(error):
                return None
            raise
        if not stack["StackStatus"].endswith("_IN_PROGRESS"):
            return stack
        if time.time() > deadline:
            raise SystemExit(f"stack {name} still {stack['StackStatus']} after {timeout} s")
        time.sleep(0.5)


def failed_events(cfn, name):
    lines = []
    for event in cfn.describe_stack_events(StackName=name)["StackEvents"]:
        if "FAILED" in event["ResourceStatus"]:
            lines.append(
                f"  {event['LogicalResourceId']} ({event['ResourceType']}): "
                f"{event.get('ResourceStatusReason', '')}"
            )
    return lines


def network(endpoint):
    """The emulator's default VPC and two of its subnets."""
    ec2 = client("ec2", endpoint)
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise SystemExit("the emulator has no default VPC to deploy into")
    vpc = vpcs[0]["VpcId"]
    subnets = [
        s["SubnetId"]
        for s in ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]
    ]
    if len(subnets) < 2:
        raise SystemExit(f"the emulator's default VPC {vpc} has fewer than two subnets")
    return vpc, ",".join(subnets[:2])


def check_queues(c, endpoint, prefix):
    sqs = client("sqs", endpoint)
    attrs = {}
    for name in ["inbound", "inbound-dlq", "notifications", "notifications-dlq"]:
        full = f"{prefix}{name}.fifo"
        try:
            url = sqs.get_queue_url(QueueName=full)["QueueUrl"]
        except sqs.exceptions.ClientError as error:
            c.true(f"queue {full} exists ({error})", False)
            continue
        a = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        attrs[name] = a
        c.eq(f"{full} FifoQueue", a.get("FifoQueue"), "true")
        c.eq(f"{full} DeduplicationScope", a.get("DeduplicationScope"), "messageGroup")
        c.eq(f"{full} FifoThroughputLimit", a.get("FifoThroughputLimit"), "perMessageGroupId")
        c.eq(f"{full} ContentBasedDeduplication", a.get("ContentBasedDeduplication"), "false")
        c.eq(f"{full} SqsManagedSseEnabled", a.get("SqsManagedSseEnabled"), "true")
        if name.endswith("-dlq"):
            c.eq(f"{full} MessageRetentionPeriod", a.get("MessageRetentionPeriod"), "1209600")
            c.true(f"{full} has no RedrivePolicy of its own", "RedrivePolicy" not in a)
    for source in ["inbound", "notifications"]:
        if source not in attrs or f"{source}-dlq" not in attrs:
            continue
        policy = json.loads(attrs[source].get("RedrivePolicy", "{}"))
        c.eq(
            f"{source} RedrivePolicy target",
            policy.get("deadLetterTargetArn"),
            attrs[f"{source}-dlq"]["QueueArn"],
        )
        c.eq(f"{source} maxReceiveCount", str(policy.get("maxReceiveCount")), str(MAX_RECEIVE))
    if "inbound" in attrs:
        c.eq("inbound VisibilityTimeout", attrs["inbound"].get("VisibilityTimeout"), str(VISIBILITY))
    return attrs


def projection(p):
    """An index's projection as TABLES writes it: its type, with INCLUDE's attributes."""
    if p["ProjectionType"] == "INCLUDE":
        return ("INCLUDE", sorted(p.get("NonKeyAttributes", [])))
    return p["ProjectionType"]


def check_tables(c, endpoint, prefix, template):
    ddb = client("dynamodb", endpoint)
    resources = template["Resources"]
    by_name = {}
    for logical, resource in resources.items():
        if resource["Type"] == "AWS::DynamoDB::Table":
            sub = resource["Properties"]["TableName"]["Fn::Sub"]
            by_name[sub.replace("${Prefix}", "")] = (logical, resource)
    c.eq("template's tables", sorted(by_name), sorted(TABLES))
    for short, (keys, gsis, ttl, data) in TABLES.items():
        name = prefix + short
        try:
            table = ddb.describe_table(TableName=name)["Table"]
        except ddb.exceptions.ResourceNotFoundException:
            c.true(f"table {name} exists", False)
            continue
        types = {a["AttributeName"]: a["AttributeType"] for a in table["AttributeDefinitions"]}
        c.eq(
            f"{name} key schema",
            [(k["AttributeName"], types.get(k["AttributeName"]), k["KeyType"]) for k in table["KeySchema"]],
            keys,
        )
        c.eq(
            f"{name} billing",
            table.get("BillingModeSummary", {}).get("BillingMode"),
            "PAY_PER_REQUEST",
        )
        got_gsis = {
            g["IndexName"]: (
                [(k["AttributeName"], types.get(k["AttributeName"]), k["KeyType"]) for k in g["KeySchema"]],
                projection(g["Projection"]),
            )
            for g in table.get("GlobalSecondaryIndexes") or []
        }
        c.eq(f"{name} GSIs", got_gsis, gsis)
        c.eq(f"{name} deletion protection", bool(table.get("DeletionProtectionEnabled")), data)
        logical, resource = by_name.get(short, (None, {}))
        props = resource.get("Properties", {})
        c.eq(f"{logical} DeletionPolicy", resource.get("DeletionPolicy"), "Retain" if data else "Delete")
        c.eq(f"{logical} UpdateReplacePolicy", resource.get("UpdateReplacePolicy"), "Retain" if data else "Delete")

        # TTL and point-in-time recovery: checked in the emulator when it applies them,
        # in the template when it does not.
        status = ddb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
        enabled = status.get("TimeToLiveStatus") in ("ENABLED", "ENABLING")
        want_spec = {"AttributeName": ttl, "Enabled": True} if ttl else None
        if ttl and not enabled:
            c.gap("TTL")
            c.eq(f"{logical} TimeToLiveSpecification in the template", props.get("TimeToLiveSpecification"), want_spec)
        elif ttl:
            c.eq(f"{name} TTL attribute", status.get("AttributeName"), ttl)
        else:
            c.true(f"{name} has no TTL", not enabled and "TimeToLiveSpecification" not in props)
        backups = ddb.describe_continuous_backups(TableName=name)["ContinuousBackupsDescription"]
        pitr = backups.get("PointInTimeRecoveryDescription", {}).get("PointInTimeRecoveryStatus")
        want_pitr = {"PointInTimeRecoveryEnabled": True} if data else None
        if data and pitr != "ENABLED":
            c.gap("point-in-time recovery")
            c.eq(f"{logical} PointInTimeRecoverySpecification in the template", props.get("PointInTimeRecoverySpecification"), want_pitr)
        elif not data:
            c.eq(f"{name} point-in-time recovery", pitr in (None, "DISABLED"), True)


def check_lambda(c, endpoint, prefix, queues, resources, template):
    lam = client("lambda", endpoint)
    name = f"{prefix}persister"
    try:
        config = lam.get_function(FunctionName=name)["Configuration"]
    except lam.exceptions.ResourceNotFoundException:
        c.true(f"function {name} exists", False)
        return
    c.eq(f"{name} runtime", config.get("Runtime"), "provided.al2023")
    c.eq(f"{name} handler", config.get("Handler"), "bootstrap")
    c.eq(f"{name} architectures", config.get("Architectures"), ["x86_64"])
    c.eq(f"{name} timeout", config.get("Timeout"), LAMBDA_TIMEOUT)
    c.eq(f"{name} memory", config.get("MemorySize"), 512)
    c.true(f"{name} runs as the persister role", config.get("Role", "").endswith("/" + resources["PersisterRole"]))
    env = config.get("Environment", {}).get("Variables", {})
    c.eq(f"{name} PARLOR_AWS_PREFIX", env.get("PARLOR_AWS_PREFIX"), prefix)
    c.eq(f"{name} PARLOR_ATTEMPTS_MAX", env.get("PARLOR_ATTEMPTS_MAX"), str(MAX_RECEIVE))
    concurrency = lam.get_function_concurrency(FunctionName=name).get("ReservedConcurrentExecutions")
    if concurrency is None:
        c.gap("a function's ReservedConcurrentExecutions")
        props = template["Resources"]["Persister"]["Properties"]
        c.eq("ReservedConcurrentExecutions in the template", props.get("ReservedConcurrentExecutions", {}).get("Fn::If", [None])[0], "HasReservedConcurrency")
    else:
        c.eq(f"{name} reserved concurrency", concurrency, RESERVED)
    mappings = lam.list_event_source_mappings(FunctionName=name)["EventSourceMappings"]
    c.eq(f"{name} event source mappings", len(mappings), 1)
    if mappings:
        m = mappings[0]
        c.eq("event source", m.get("EventSourceArn"), queues.get("inbound", {}).get("QueueArn"))
        c.eq("event source BatchSize", m.get("BatchSize"), 10)
        c.eq("event source FunctionResponseTypes", m.get("FunctionResponseTypes"), ["ReportBatchItemFailures"])
        c.eq("event source MaximumConcurrency", m.get("ScalingConfig", {}).get("MaximumConcurrency"), MAX_CONCURRENCY)
        c.eq("event source state", m.get("State"), "Enabled")


def check_gateways(c, endpoint, prefix, resources, template, certificate):
    ecs = client("ecs", endpoint)
    elb = client("elbv2", endpoint)
    task = ecs.describe_task_definition(taskDefinition=resources["GatewayTaskDefinition"])["taskDefinition"]
    c.eq("task compatibilities", task.get("requiresCompatibilities"), ["FARGATE"])
    c.eq("task network mode", task.get("networkMode"), "awsvpc")
    c.eq("task cpu/memory", (task.get("cpu"), task.get("memory")), ("512", "1024"))
    c.true("task role", task.get("taskRoleArn", "").endswith("/" + resources["GatewayTaskRole"]))
    c.true("execution role", task.get("executionRoleArn", "").endswith("/" + resources["GatewayExecutionRole"]))
    container = task["containerDefinitions"][0]
    c.eq("container command", container.get("command"), ["gateway", "--aws"])
    c.eq("container port", [p.get("containerPort") for p in container.get("portMappings", [])], [8080])
    c.eq("container stopTimeout", container.get("stopTimeout"), 30)
    env = {e["name"]: e["value"] for e in container.get("environment", [])}
    c.eq("container PARLOR_AWS_PREFIX", env.get("PARLOR_AWS_PREFIX"), prefix)
    c.eq("container PARLOR_LISTEN", env.get("PARLOR_LISTEN"), "0.0.0.0:8080")
    c.eq("container PARLOR_S3_BUCKET", env.get("PARLOR_S3_BUCKET"), resources.get("FilesBucket"))
    c.eq("container PARLOR_S3_PREFIX", env.get("PARLOR_S3_PREFIX"), "blobs")
    c.eq("container PARLOR_ATTEMPTS_MAX", env.get("PARLOR_ATTEMPTS_MAX"), str(MAX_RECEIVE))
    c.eq("container PARLOR_COOKIE_SECURE (HTTPS)", env.get("PARLOR_COOKIE_SECURE"), "true")
    c.eq("container PARLOR_ALLOWED_ORIGINS", env.get("PARLOR_ALLOWED_ORIGINS"), ORIGIN)
    c.eq("container logs", container.get("logConfiguration", {}).get("logDriver"), "awslogs")
    # What the emulator stores empty or drops: checked in the template instead.
    props = template["Resources"]["GatewayTaskDefinition"]["Properties"]
    declared = props["ContainerDefinitions"][0]
    if container.get("healthCheck", {}).get("command"):
        c.eq("container health check", container["healthCheck"]["command"][:2], ["CMD", "bash"])
    else:
        c.gap("a container's HealthCheck")
        c.eq("HealthCheck in the template", declared.get("HealthCheck", {}).get("Command", [])[:2], ["CMD", "bash"])
    if any(u.get("name") == "nofile" for u in container.get("ulimits") or []):
        c.true("container nofile", any(u.get("softLimit") == 65536 for u in container["ulimits"]))
    else:
        c.gap("Ulimits")
        c.eq("Ulimits in the template", declared.get("Ulimits"), [{"Name": "nofile", "SoftLimit": 65536, "HardLimit": 65536}])
    if task.get("runtimePlatform"):
        c.eq("task OS", task["runtimePlatform"].get("operatingSystemFamily"), "LINUX")
    else:
        c.gap("a task's RuntimePlatform")
        c.eq("RuntimePlatform in the template", props.get("RuntimePlatform", {}).get("OperatingSystemFamily"), "LINUX")

    service = ecs.describe_services(cluster=resources["Cluster"], services=[resources["GatewayService"]])["services"]
    c.eq("gateway service", len(service), 1)
    if service:
        s = service[0]
        c.eq("service launch type", s.get("launchType"), "FARGATE")
        c.eq("service desired count (no containers in the emulator)", s.get("desiredCount"), 0)
        c.eq("service target group", [lb.get("targetGroupArn") for lb in s.get("loadBalancers", [])], [resources["GatewayTargetGroup"]])
        breaker = s.get("deploymentConfiguration", {}).get("deploymentCircuitBreaker", {})
        c.eq("service circuit breaker", (breaker.get("enable"), breaker.get("rollback")), (True, True))

    lb_attrs = {a["Key"]: a["Value"] for a in elb.describe_load_balancer_attributes(LoadBalancerArn=resources["LoadBalancer"])["Attributes"]}
    c.eq("ALB idle timeout", lb_attrs.get("idle_timeout.timeout_seconds"), "75")
    group = elb.describe_target_groups(TargetGroupArns=[resources["GatewayTargetGroup"]])["TargetGroups"][0]
    c.eq("target group health check", (group.get("HealthCheckPath"), group.get("Matcher", {}).get("HttpCode")), ("/readyz", "200"))
    c.eq("target group port/type", (group.get("Port"), group.get("TargetType")), (8080, "ip"))
    tg_attrs = {a["Key"]: a["Value"] for a in elb.describe_target_group_attributes(TargetGroupArn=resources["GatewayTargetGroup"])["Attributes"]}
    c.eq("deregistration delay", tg_attrs.get("deregistration_delay.timeout_seconds"), "20")
    c.eq("stickiness", tg_attrs.get("stickiness.enabled"), "false")
    listeners = {l["Protocol"]: l for l in elb.describe_listeners(LoadBalancerArn=resources["LoadBalancer"])["Listeners"]}
    c.eq("listeners", sorted((p, l["Port"]) for p, l in listeners.items()), [("HTTP", 80), ("HTTPS", 443)])
    for protocol, listener in listeners.items():
        action = listener["DefaultActions"][0]
        c.eq(f"{protocol} listener forwards", (action.get("Type"), action.get("TargetGroupArn")), ("forward", resources["GatewayTargetGroup"]))
    if "HTTPS" in listeners:
        c.eq("HTTPS certificate", [x["CertificateArn"] for x in listeners["HTTPS"].get("Certificates", [])], [certificate])
    if "HTTP" in listeners:
        rules = [r for r in elb.describe_rules(ListenerArn=listeners["HTTP"]["ListenerArn"])["Rules"] if not r.get("IsDefault")]
        c.eq("HTTP redirect rule", [(a.get("Type"), a.get("RedirectConfig", {}).get("Protocol")) for r in rules for a in r["Actions"]], [("redirect", "HTTPS")])

    ec2 = client("ec2", endpoint)
    group = ec2.describe_security_groups(GroupIds=[resources["GatewaySecurityGroup"]])["SecurityGroups"][0]
    sources = [
        (p.get("FromPort"), pair.get("GroupId"))
        for p in group.get("IpPermissions", [])
        for pair in p.get("UserIdGroupPairs", [])
    ]
    c.eq("gateways accept 8080 from the ALB only", sources, [(8080, resources["AlbSecurityGroup"])])
    c.eq("gateways accept no address range", [p.get("IpRanges") for p in group.get("IpPermissions", []) if p.get("IpRanges")], [])


def policy_statements(iam, role):
    statements = []
    for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
        document = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
        if isinstance(document, str):
            document = json.loads(document)
        statements += document["Statement"]
    return statements


def check_roles(c, endpoint, prefix, resources):
    iam = client("iam", endpoint)
    arns = lambda s: s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]]
    actions = lambda s: s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
    persister = policy_statements(iam, resources["PersisterRole"])
    gateway = policy_statements(iam, resources["GatewayTaskRole"])
    for role, statements in [("persister", persister), ("gateway", gateway)]:
        c.true(f"{role} role has statements", bool(statements))
        c.true(f"{role} role: no wildcard actions", all("*" not in a for s in statements for a in actions(s)))
        c.true(
            f"{role} role: no wildcard resources",
            all(r != "*" for s in statements for r in arns(s)),
        )
    persister_resources = [r for s in persister for r in arns(s)]
    c.true(
        "persister role: no registry tables",
        not any(f"table/{prefix}{t}" in r for r in persister_resources for t in ("connections", "nodes")),
    )
    c.true(
        "persister role: the by_user index",
        any(r.endswith(f"table/{prefix}members/index/by_user") for r in persister_resources),
    )
    c.true(
        "persister role: files and blobs (a message's files change in its transaction)",
        all(any(r.endswith(f"table/{prefix}{t}") for r in persister_resources) for t in ("files", "blobs")),
    )
    gateway_resources = [r for s in gateway for r in arns(s)]
    c.true(
        "gateway role: the files and blobs indexes (the janitor)",
        all(
            any(r.endswith(f"table/{prefix}{index}") for r in gateway_resources)
            for index in ("files/index/unattached", "blobs/index/idle")
        ),
    )
    objects = [s for s in gateway if any(r.endswith(":" + resources.get("FilesBucket", "?") + "/blobs/*") for r in arns(s))]
    c.true(
        "gateway role: the files bucket's blobs, read, written and deleted",
        bool(objects) and {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"} <= set(actions(objects[0])),
    )
    c.true(
        "gateway role: the by_node index",
        any(r.endswith(f"table/{prefix}connections/index/by_node") for r in gateway_resources),
    )
    c.true(
        "roles: no table administration",
        not any(a in ("dynamodb:CreateTable", "dynamodb:DeleteTable", "dynamodb:UpdateTable") for s in persister + gateway for a in actions(s)),
    )
    scans = [r for s in gateway for r in arns(s) if "dynamodb:Scan" in actions(s)]
    c.eq("gateway role: scans the nodes table only", [r.rsplit("/", 1)[-1] for r in scans], [f"{prefix}nodes"])
    relay = [s for s in gateway if any(r.endswith(f":{prefix}node-*.fifo") for r in arns(s))]
    c.true("gateway role: relay queues by name pattern", bool(relay))
    if relay:
        c.true("gateway role: creates and deletes relay queues", {"sqs:CreateQueue", "sqs:DeleteQueue"} <= set(actions(relay[0])))
    sends = {r for s in gateway for r in arns(s) if "sqs:SendMessage" in actions(s)}
    c.true("gateway role: sends to inbound, not to the inbound DLQ", any(r.endswith(f":{prefix}inbound.fifo") for r in sends) and not any(r.endswith(f":{prefix}inbound-dlq.fifo") for r in sends))


def check_alarms(c, endpoint, prefix, resources):
    cw = client("cloudwatch", endpoint)
    sns = client("sns", endpoint)
    topic = resources.get("AlarmTopic")
    subscriptions = sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"] if topic else []
    c.eq("alarm topic's subscription", [(s["Protocol"], s["Endpoint"]) for s in subscriptions], [("email", EMAIL)])
    alarms = {a["AlarmName"]: a for a in cw.describe_alarms(AlarmNamePrefix=prefix)["MetricAlarms"]}
    want = {
        f"{prefix}inbound-dead-letters": ("ApproximateNumberOfMessagesVisible", f"{prefix}inbound-dlq.fifo", 0.0),
        f"{prefix}notifications-dead-letters": ("ApproximateNumberOfMessagesVisible", f"{prefix}notifications-dlq.fifo", 0.0),
        f"{prefix}inbound-oldest-message": ("ApproximateAgeOfOldestMessage", f"{prefix}inbound.fifo", 120.0),
    }
    c.eq("alarms", sorted(alarms), sorted(want))
    for name, (metric, queue, threshold) in want.items():
        a = alarms.get(name)
        if not a:
            continue
        c.eq(
            f"alarm {name}",
            (a.get("Namespace"), a.get("MetricName"), a.get("Dimensions"), a.get("Threshold"), a.get("ComparisonOperator")),
            ("AWS/SQS", metric, [{"Name": "QueueName", "Value": queue}], threshold, "GreaterThanThreshold"),
        )
        c.eq(f"alarm {name} actions", (a.get("AlarmActions"), a.get("OKActions")), ([topic], [topic]))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--template", default="deploy/aws/parlor.yaml")
    args = parser.parse_args()
    endpoint = args.endpoint
    body = open(args.template).read()
    template = yaml.load(body, Loader=CfnLoader)

    run = uuid.uuid4().hex[:10]
    prefix = f"chk{run}-"
    stack = f"parlor-check-{run}"
    bucket = f"parlor-check-{run}"
    cfn = client("cloudformation", endpoint)
    s3 = client("s3", endpoint)
    ddb = client("dynamodb", endpoint)
    acm = client("acm", endpoint)
    c = Checks()
    started = time.time()
    created = False
    certificate = None
    files_bucket = None
    try:
        # Every condition on: HTTPS (a certificate from the emulator's ACM), alarm e-mail,
        # reserved concurrency, an extra origin.
        certificate = acm.request_certificate(DomainName="chat.example.com")["CertificateArn"]
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key="parlor/bootstrap.zip", Body=placeholder_zip())
        vpc, subnets = network(endpoint)
        parameters = {
            "Prefix": prefix,
            "VpcId": vpc,
            "AlbSubnetIds": subnets,
            "TaskSubnetIds": subnets,
            "GatewayImage": "parlor-check.invalid/parlor:check",
            "LambdaCodeBucket": bucket,
            "LambdaCodeKey": "parlor/bootstrap.zip",
            "LambdaTimeoutSeconds": str(LAMBDA_TIMEOUT),
            "LambdaMaximumConcurrency": str(MAX_CONCURRENCY),
            "MaxReceiveCount": str(MAX_RECEIVE),
            "LambdaReservedConcurrency": str(RESERVED),
            "CertificateArn": certificate,
            "AlarmEmail": EMAIL,
            "AllowedOrigins": ORIGIN,
            "Emulator": "true",
        }
        cfn.create_stack(
            StackName=stack,
            TemplateBody=body,
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
            Capabilities=["CAPABILITY_IAM"],
        )
        created = True
        status = wait_stack(cfn, stack)
        if status is None or status["StackStatus"] != "CREATE_COMPLETE":
            state = status["StackStatus"] if status else "gone"
            print(f"check_stack: stack {stack} ended {state}, not CREATE_COMPLETE:", file=sys.stderr)
            print("\n".join(failed_events(cfn, stack)), file=sys.stderr)
            return 1
        created_in = time.time() - started

        resources = {
            r["LogicalResourceId"]: r["PhysicalResourceId"]
            for r in cfn.describe_stack_resources(StackName=stack)["StackResources"]
        }
        expected = set(template["Resources"])
        c.eq("resources created", sorted(resources), sorted(expected))
        outputs = {o["OutputKey"]: o["OutputValue"] for o in status.get("Outputs", [])}
        c.eq("outputs", sorted(outputs), sorted(template["Outputs"]))
        c.eq("output TableNames", sorted(outputs.get("TableNames", "").split(",")), sorted(prefix + t for t in TABLES))

        files_bucket = resources.get("FilesBucket")
        queues = check_queues(c, endpoint, prefix)
        check_tables(c, endpoint, prefix, template)
        check_files_bucket(c, s3, files_bucket)
        check_lambda(c, endpoint, prefix, queues, resources, template)
        check_gateways(c, endpoint, prefix, resources, template, certificate)
        check_roles(c, endpoint, prefix, resources)
        check_alarms(c, endpoint, prefix, resources)

        # Deleting the stack removes everything but the store's tables, which it keeps.
        cfn.delete_stack(StackName=stack)
        gone = wait_stack(cfn, stack)
        c.true(f"stack deleted (is {gone and gone['StackStatus']})", gone is None or gone["StackStatus"] == "DELETE_COMPLETE")
        created = False
        sqs = client("sqs", endpoint)
        left = sqs.list_queues(QueueNamePrefix=prefix).get("QueueUrls", [])
        c.eq("queues left after deletion", left, [])
        buckets = [b["Name"] for b in s3.list_buckets().get("Buckets", [])]
        c.true("the files bucket is kept after deletion (users' data)", files_bucket in buckets)
        tables = tables_named(ddb, prefix)
        c.eq(
            "tables kept after deletion (the store's)",
            sorted(tables),
            sorted(prefix + t for t, spec in TABLES.items() if spec[3]),
        )
    finally:
        if created:
            try:
                cfn.delete_stack(StackName=stack)
                wait_stack(cfn, stack)
            except Exception as error:  # best effort: report, go on cleaning
                print(f"check_stack: cannot delete stack {stack}: {error}", file=sys.stderr)
        cleanup(ddb, s3, prefix, bucket)
        if files_bucket:
            cleanup_bucket(s3, files_bucket)
        if certificate:
            try:
                acm.delete_certificate(CertificateArn=certificate)
            except Exception as error:
                print(f"check_stack: cannot delete certificate {certificate}: {error}", file=sys.stderr)

    elapsed = time.time() - started
    if c.failures:
        print(f"check_stack: {len(c.failures)} of {c.count} checks failed:", file=sys.stderr)
        for failure in c.failures:
            print(f"  {failure}", file=sys.stderr)
        return 1
    gaps = "; not applied by the emulator, so checked in the template: " + ", ".join(c.gaps) if c.gaps else ""
    print(
        f"stack with {len(resources)} resources created in {created_in:.1f} s, "
        f"{c.count} checks passed, deleted in {elapsed:.1f} s; gateway service at 0 tasks (Emulator=true){gaps}"
    )
    return 0


def tables_named(ddb, prefix):
    """The emulator's tables whose names start with `prefix` (it is shared: there may be
    many more than one page)."""
    names = []
    for page in ddb.get_paginator("list_tables").paginate():
        names += [t for t in page["TableNames"] if t.startswith(prefix)]
    return names


def check_files_bucket(c, s3, bucket):
    c.true("files bucket created", bool(bucket))
    if not bucket:
        return
    try:
        block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
        c.true("files bucket: no public access", all(block.values()))
    except Exception as error:
        c.gap(f"files bucket public access block ({error.__class__.__name__})")
    try:
        rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
        c.eq(
            "files bucket: encrypted at rest",
            [r["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] for r in rules],
            ["AES256"],
        )
    except Exception as error:
        c.gap(f"files bucket encryption ({error.__class__.__name__})")


def cleanup_bucket(s3, bucket):
    try:
        for item in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=item["Key"])
        s3.delete_bucket(Bucket=bucket)
    except Exception as error:
        if "NoSuchBucket" not in str(error):
            print(f"check_stack: cannot delete bucket {bucket}: {error}", file=sys.stderr)


def cleanup(ddb, s3, prefix, bucket):
    """The store tables a deleted stack keeps, and the code bucket."""
    for table in tables_named(ddb, prefix):
        try:
            ddb.update_table(TableName=table, DeletionProtectionEnabled=False)
            ddb.delete_table(TableName=table)
        except Exception as error:
            print(f"check_stack: cannot delete table {table}: {error}", file=sys.stderr)
    try:
        for item in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=item["Key"])
        s3.delete_bucket(Bucket=bucket)
    except Exception as error:
        if "NoSuchBucket" not in str(error):
            print(f"check_stack: cannot delete bucket {bucket}: {error}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
