"""Deploys the Lambda persister into a local emulator (ministack), as AWS would run it:
this build's `parlor` binary packaged as `bootstrap` for the provided.al2023 runtime, fed by
an SQS event source mapping on the inbound FIFO queue that reports partial batch failures.

    python3 deploy/aws/local_lambda.py up   BINARY   # creates or updates the function
    python3 deploy/aws/local_lambda.py down          # deletes the mapping and the function

Settings come from the environment: PARLOR_AWS_ENDPOINT (ministack), PARLOR_AWS_PREFIX,
and the function's own environment (PARLOR_AWS_*) passed on as they are.
"""

import io
import os
import sys
import time
import zipfile

import boto3

ENDPOINT = os.environ["PARLOR_AWS_ENDPOINT"]
PREFIX = os.environ.get("PARLOR_AWS_PREFIX", "parlor-")
FUNCTION = f"{PREFIX}persister"
# Passed on to the function: where the tables and queues are, and the log filter.
PASSED_ON = [
    "PARLOR_AWS_PREFIX",
    "PARLOR_AWS_ENDPOINT",
    "PARLOR_AWS_DYNAMODB_ENDPOINT",
    "PARLOR_AWS_VISIBILITY_TIMEOUT_SECS",
    "PARLOR_LOG",
]


def client(service):
    return boto3.client(
        service,
        endpoint_url=ENDPOINT,
        region_name=os.environ.get("AWS_REGION", "us-east-1"),
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def package(binary):
    """A zip holding the binary as an executable `bootstrap`."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        info = zipfile.ZipInfo("bootstrap")
        info.external_attr = 0o755 << 16
        with open(binary, "rb") as file:
            archive.writestr(info, file.read())
    return buffer.getvalue()


def up(binary):
    lam, sqs = client("lambda"), client("sqs")
    code = package(binary)
    environment = {name: os.environ[name] for name in PASSED_ON if name in os.environ}
    try:
        lam.get_function(FunctionName=FUNCTION)
        lam.update_function_code(FunctionName=FUNCTION, ZipFile=code)
        lam.update_function_configuration(
            FunctionName=FUNCTION, Environment={"Variables": environment}
        )
    except lam.exceptions.ResourceNotFoundException:
        lam.create_function(
            FunctionName=FUNCTION,
            Runtime="provided.al2023",
            Handler="bootstrap",
            Role="arn:aws:iam::000000000000:role/parlor-persister",
            Code={"ZipFile": code},
            Timeout=30,
            MemorySize=256,
            Environment={"Variables": environment},
        )
    url = sqs.get_queue_url(QueueName=f"{PREFIX}inbound.fifo")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    mappings = lam.list_event_source_mappings(FunctionName=FUNCTION)[
        "EventSourceMappings"
    ]
    if not any(m["EventSourceArn"] == arn for m in mappings):
        lam.create_event_source_mapping(
            FunctionName=FUNCTION,
            EventSourceArn=arn,
            BatchSize=10,
            FunctionResponseTypes=["ReportBatchItemFailures"],
            Enabled=True,
        )
    for _ in range(100):
        state = lam.get_function(FunctionName=FUNCTION)["Configuration"].get("State")
        if state in (None, "Active"):
            break
        time.sleep(0.1)
    print(f"lambda: {FUNCTION} consumes {PREFIX}inbound.fifo")


def down():
    lam = client("lambda")
    try:
        for mapping in lam.list_event_source_mappings(FunctionName=FUNCTION)[
            "EventSourceMappings"
        ]:
            lam.delete_event_source_mapping(UUID=mapping["UUID"])
        lam.delete_function(FunctionName=FUNCTION)
    except lam.exceptions.ResourceNotFoundException:
        pass


if __name__ == "__main__":
    if sys.argv[1:2] == ["up"] and len(sys.argv) == 3:
        up(sys.argv[2])
    elif sys.argv[1:] == ["down"]:
        down()
    else:
        sys.exit(__doc__)
