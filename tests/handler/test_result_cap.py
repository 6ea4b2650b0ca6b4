"""The result cap in serverless mode, with outputs moved to a local S3-compatible server."""

import subprocess
import sys

import boto3
import pytest
import requests

from client.envelope_client import open_answer, open_blob, seal_request
from tests.stack import Stack, free_port, wait_until
from tests.workflows import empty_image

ACCESS = {"aws_access_key_id": "test-id", "aws_secret_access_key": "test-secret", "region_name": "us-east-1"}


@pytest.fixture(scope="module")
def s3():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"

    def up():
        try:
            return requests.get(url, timeout=1).status_code < 500
        except requests.RequestException:
            return False

    wait_until(up, 30, "the S3 server")
    boto3.client("s3", endpoint_url=url, **ACCESS).create_bucket(Bucket="outputs")
    yield url
    proc.terminate()
    proc.wait(10)


def start(env):
    stack = Stack("serverless", {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0", **env}).ready()
    return stack


def runsync(stack, payload):
    return requests.post(f"{stack.url}/v2/LOCAL/runsync", json={"input": payload}, timeout=90).json()


def test_outputs_over_the_cap_become_urls_and_sealed_blobs(s3):
    stack = start(
        {
            "MAX_RESULT_MB": "0.0005",
            "BUCKET_ENDPOINT_URL": s3,
            "BUCKET_ACCESS_KEY_ID": ACCESS["aws_access_key_id"],
            "BUCKET_SECRET_ACCESS_KEY": ACCESS["aws_secret_access_key"],
            "BUCKET_NAME": "outputs",
        }
    )
    try:
        job = runsync(stack, {"workflow": empty_image(300, 200, 0x00FF00)})
        assert job["status"] == "COMPLETED", job
        [output] = job["output"]["outputs"]
        assert "data" not in output and output["sealed"] is False
        png = requests.get(output["url"], timeout=30).content
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) == output["size"]

        request, ephemeral = seal_request({"workflow": empty_image(300, 200, 0x0000FF)}, stack.public_key)
        result = open_answer(runsync(stack, request)["output"], ephemeral, stack.public_key)
        [output] = result["outputs"]
        blob = requests.get(output["url"], timeout=30).content
        assert b"PNG" not in blob[:64]
        assert open_blob(blob, ephemeral, stack.public_key)[:4] == b"\x89PNG"

        compat = runsync(
            stack, {"workflow": empty_image(300, 200, 0xFF00FF), "output_format": "worker-comfyui"}
        )
        [image] = compat["output"]["images"]  # worker-comfyui's S3 form: the URL in `data`
        assert image["type"] == "s3_url" and image["filename"].endswith(".png")
        assert requests.get(image["data"], timeout=30).content[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        stack.stop()


def test_over_the_cap_without_a_bucket_fails_with_sizes():
    stack = start({"MAX_RESULT_MB": "0.0005"})
    try:
        job = runsync(stack, {"workflow": empty_image(300, 200, 0xFF0000)})
        assert job["status"] == "FAILED" and job["error"].startswith("output_too_large: the result is")
        assert "node 2" in job["error"]
    finally:
        stack.stop()
