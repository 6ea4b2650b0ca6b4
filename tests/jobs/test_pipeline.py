"""The pipeline's result cap: outputs that would not fit are refused with their sizes, or moved
to a bucket (sealed for encrypted jobs). The live S3 path is in tests/handler/test_result_cap.py."""

import base64

import pytest

from client.envelope_client import key_id, open_answer, open_blob, seal_request
from services.core import config
from services.jobs import envelopes
from tests.pipelines import pipeline

PRIVATE, PUBLIC = envelopes.keypair()
BIG = base64.b64encode(b"\x89PNG" + b"x" * 5000).decode()
RESULT = {
    "status": "ok",
    "prompt_id": "p1",
    "outputs": [
        {
            "node_id": "9",
            "filename": "a.png",
            "type": "images",
            "mime": "image/png",
            "size": 5004,
            "data": BIG,
        }
    ],
}
WORKFLOW = {"1": {"class_type": "SaveImage", "inputs": {}}}


class Executor:
    def execute(self, job, progress, cancel):
        return RESULT


class Store:
    def __init__(self):
        self.objects = {}

    def put(self, key, data, mime):
        self.objects[key] = (data, mime)
        return f"https://bucket.example/{key}"


def capped(limit, store=None, **env):
    settings = config.load({"WORKER_PRIVATE_KEY_B64": PRIVATE, "ENCRYPTION_REQUIRED": "0", **env})
    return pipeline(settings, Executor(), result_limit_bytes=limit, output_store=store)


def test_a_result_under_the_cap_is_inline():
    assert capped(10**6).run({"workflow": WORKFLOW}).body == RESULT


def test_over_the_cap_without_a_bucket_is_output_too_large_with_sizes():
    reply = capped(1000).run({"workflow": WORKFLOW})
    assert reply.status == 507 and reply.error_code == "output_too_large"
    assert "node 9 0.01 MB" in reply.body["error"] and "BUCKET_" in reply.body["error"]


def test_encrypted_size_counts_the_sealing_overhead():
    request, ephemeral = seal_request({"workflow": WORKFLOW}, PUBLIC)
    limit = 7000  # the plain result fits, the sealed answer would not
    assert capped(limit).run({"workflow": WORKFLOW}).status == 200
    reply = capped(limit).run(request)
    assert open_answer(reply.body, ephemeral, PUBLIC)["error"].startswith("output_too_large")


def test_over_the_cap_with_a_bucket_answers_urls():
    store = Store()
    body = capped(1000, store).run({"workflow": WORKFLOW}).body
    [output] = body["outputs"]
    assert (
        "data" not in output
        and output["url"].startswith("https://bucket.example/p1/")
        and output["sealed"] is False
    )
    [(data, mime)] = store.objects.values()
    assert data == base64.b64decode(BIG) and mime == "image/png"


def test_an_encrypted_job_puts_only_sealed_blobs_in_the_bucket():
    store = Store()
    request, ephemeral = seal_request({"workflow": WORKFLOW}, PUBLIC)
    result = open_answer(capped(1000, store).run(request).body, ephemeral, PUBLIC)
    assert result["outputs"][0]["sealed"] is True
    [(blob, mime)] = store.objects.values()
    assert b"PNG" not in blob and mime == "application/octet-stream"
    assert open_blob(blob, ephemeral, PUBLIC) == base64.b64decode(BIG)


class Progressing:
    def execute(self, job, progress, cancel):
        progress({"node": "7"})
        progress({"node": "7", "value": 2, "max": 4})
        return RESULT


def test_progress_of_an_encrypted_job_is_only_a_percentage():
    settings = config.load({"WORKER_PRIVATE_KEY_B64": PRIVATE, "ENCRYPTION_REQUIRED": "0"})
    seen = []
    request, _ = seal_request({"workflow": WORKFLOW}, PUBLIC)
    pipeline(settings, Progressing()).run(request, seen.append)
    assert seen == [{"percent": 50}]
    seen.clear()
    pipeline(settings, Progressing()).run({"workflow": WORKFLOW}, seen.append)  # plain keeps detail
    assert seen == [{"node": "7"}, {"node": "7", "value": 2, "max": 4}]


@pytest.mark.parametrize("webhook", ["http://[::1", "http://example.com:70000/x", "https://h:port/", 7])
def test_a_webhook_that_does_not_parse_is_invalid_webhook(webhook):
    dry = pipeline(config.load({"ENCRYPTION_REQUIRED": "0", "DRY_RUN": "1"}))
    reply = dry.run({"workflow": WORKFLOW, "webhook": webhook})
    assert reply.status == 400 and reply.error_code == "invalid_webhook"


@pytest.mark.parametrize("url", ["http://[::1/x.png", "http://example.com:99999/x.png"])
def test_an_image_url_that_does_not_parse_is_image_fetch_failed(url):
    dry = pipeline(config.load({"ENCRYPTION_REQUIRED": "0", "DRY_RUN": "1"}))
    reply = dry.run({"workflow": WORKFLOW, "images": [{"name": "a.png", "url": url}]})
    assert reply.status == 400 and reply.error_code == "image_fetch_failed"


@pytest.mark.parametrize(
    "extra,code",
    [({"webhook": "http://[::1"}, "invalid_webhook"), ({"ts": "yesterday"}, "invalid_request")],
)
def test_an_encrypted_job_s_own_errors_come_back_sealed(extra, code):
    dry = pipeline(config.load({"WORKER_PRIVATE_KEY_B64": PRIVATE, "DRY_RUN": "1"}))
    body, ephemeral = seal_request({"workflow": WORKFLOW, **extra}, PUBLIC)
    reply = dry.run(body)
    assert reply.status == 400 and reply.error_code == code
    assert set(reply.body) >= {"ciphertext", "nonce"} and "error" not in reply.body
    assert open_answer(reply.body, ephemeral, PUBLIC)["error"].startswith(code)


def test_a_replay_is_still_refused_in_plaintext():
    dry = pipeline(config.load({"WORKER_PRIVATE_KEY_B64": PRIVATE, "DRY_RUN": "1"}))
    body, _ = seal_request({"workflow": WORKFLOW, "webhook": "http://[::1"}, PUBLIC)
    assert dry.run(body).error_code == "invalid_webhook"
    replayed = dry.run(body)  # refused before the job: in plaintext, as README says
    assert replayed.status == 409 and replayed.body["error"].startswith("replayed_request")


def end_lines(caplog) -> list:
    return [r for r in caplog.records if getattr(r, "event", None) == "job.end"]


def test_each_job_says_its_end_in_one_line_naming_no_content(caplog):
    """Job id, route, outcome, code, key, template, times and sizes; never the workflow, a
    prompt, a node, an output or a URL, and an encrypted call's template by no name."""
    caplog.set_level("INFO", logger="worker.pipeline")
    dry = pipeline(
        config.load({"WORKER_PRIVATE_KEY_B64": PRIVATE, "ENCRYPTION_REQUIRED": "0", "DRY_RUN": "1"})
    )
    marker = "okapi-prompt-text"
    workflow = {"7": {"class_type": "SaveImage", "inputs": {"filename_prefix": marker}}}
    plain = dry.run({"workflow": workflow}, name="job-a", route="async")
    body, _ = seal_request({"workflow": workflow, "webhook": f"https://{marker}.example/"}, PUBLIC)
    sealed = dry.run(body, route="/run")
    refused = dry.run({"workflow": "nope"}, route="/run")
    [a, b, c] = end_lines(caplog)
    assert (a.job_id, a.route, a.outcome, a.code, a.encrypted) == ("job-a", "async", "completed", "", False)
    assert plain.job_id == "job-a" and sealed.job_id == b.job_id and b.job_id.startswith("run-")
    assert (b.outcome, b.code, b.encrypted, b.kid) == (
        "failed",
        "invalid_webhook",
        True,
        key_id(PUBLIC),
    )
    assert (c.outcome, c.code) == ("failed", "invalid_workflow") and refused.job_id == c.job_id
    assert all(r.bytes_in > 0 and r.bytes_out > 0 and r.total_s >= 0 and r.pod for r in (a, b, c))
    text = caplog.text
    assert marker not in text and "SaveImage" not in text and '"7"' not in text
    assert "job job-a ended: route=async key=- outcome=completed code=- encrypted=False" in a.getMessage()
