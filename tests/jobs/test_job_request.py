import base64

import pytest

from services.core import errors
from services.jobs import job_request

WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}
}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
NOT_AN_IMAGE = base64.b64encode(b"%PDF-1.7 not an image").decode()


def parse(payload, timeout=600.0, no_history=False):
    return job_request.parse(payload, default_timeout_s=timeout, no_history_default=no_history)


def test_full_request():
    job = parse(
        {
            "workflow": WORKFLOW,
            "images": [{"name": "a.png", "image": PNG}],
            "no_history": True,
            "timeout_s": 5,
        }
    )
    assert job.workflow == WORKFLOW and job.no_history is True and job.timeout_s == 5.0
    assert job.images[0].name == "a.png" and job.images[0].data.startswith(b"\x89PNG")


def test_bare_workflow_is_accepted():
    job = parse(WORKFLOW)
    assert job.workflow == WORKFLOW and job.images == () and job.timeout_s == 600.0


def test_request_timeout_cannot_exceed_the_worker_limit():
    assert parse({"workflow": WORKFLOW, "timeout_s": 9999}, timeout=60).timeout_s == 60


def test_no_history_default_comes_from_the_worker():
    assert parse({"workflow": WORKFLOW}, no_history=True).no_history is True


def test_data_uri_prefix_is_allowed():
    job = parse(
        {"workflow": WORKFLOW, "images": [{"name": "a.png", "image": "data:image/png;base64," + PNG}]}
    )
    assert job.images[0].data.startswith(b"\x89PNG")


def test_graph_export_says_how_to_export_the_api_format():
    for payload in ({"nodes": [], "links": []}, {"workflow": {"nodes": [], "links": [], "version": 0.4}}):
        with pytest.raises(errors.InvalidWorkflow, match="Export \\(API\\)"):
            parse(payload)


@pytest.mark.parametrize(
    "workflow,match",
    [
        ([1, 2], "must be an object of nodes, got a list"),
        ("text", "got a string"),
        ({}, "no nodes"),
        ({"1": 5}, "node 1 must be an object"),
        ({"1": {"inputs": {}}}, "node 1 has no 'class_type'"),
        ({"1": {"class_type": "X", "inputs": []}}, "'inputs' must be an object"),
    ],
)
def test_bad_workflows(workflow, match):
    with pytest.raises(errors.InvalidWorkflow, match=match):
        parse({"workflow": workflow})


@pytest.mark.parametrize("payload", [[1], "x", 3, None])
def test_payload_must_be_an_object(payload):
    with pytest.raises(errors.InvalidRequest, match="JSON object"):
        parse(payload)


def test_payload_without_workflow():
    with pytest.raises(errors.InvalidRequest, match="no 'workflow'"):
        parse({"prompt": "a cat"})


@pytest.mark.parametrize(
    "images,match",
    [
        ("x", "must be a list"),
        ([1], r"images\[0\] must be an object"),
        ([{"name": "../x.png", "image": PNG}], "plain file name"),
        ([{"name": "/etc/passwd", "image": PNG}], "plain file name"),
        ([{"name": "a\x00.png", "image": PNG}], "plain file name"),
        ([{"name": "..", "image": PNG}], "plain file name"),
        ([{"name": "a.png", "image": "%%%"}], "not valid base64"),
        ([{"name": "a.png", "image": ""}], "not valid base64"),
        ([{"name": "a.png", "image": 5}], "not valid base64"),
        ([{"name": "a.png", "image": NOT_AN_IMAGE}], "not a PNG, JPEG, WEBP, GIF, BMP or TIFF image"),
        ([{"name": "a.png", "image": PNG}, {"name": "a.png", "image": PNG}], "repeats"),
    ],
)
def test_bad_images(images, match):
    with pytest.raises(errors.InvalidRequest, match=match):
        parse({"workflow": WORKFLOW, "images": images})


@pytest.mark.parametrize("value", [0, -1, "5", True, float("nan")])
def test_bad_timeout(value):
    with pytest.raises(errors.InvalidRequest, match="timeout_s"):
        parse({"workflow": WORKFLOW, "timeout_s": value})


def test_bad_no_history():
    with pytest.raises(errors.InvalidRequest, match="no_history"):
        parse({"workflow": WORKFLOW, "no_history": "yes"})


BROKEN = {
    "no_history": "yes",
    "timeout_s": float("nan"),
    "output_format": "png",
    "comfy_org_api_key": 5,
    "models": [1],
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_each_declared_option_is_checked_as_the_document_shows_it(name):
    """One declaration: the OpenAPI document shows the very rules the check enforces."""
    for shape in job_request.SHAPES["RunRequest"]["oneOf"][:2]:  # a plain job, a template call
        assert shape["properties"][name] == job_request.OPTIONS[name]
    with pytest.raises(errors.InvalidRequest, match=f"'{name}' must"):
        parse({"workflow": WORKFLOW, name: BROKEN[name]})
    parse({"workflow": WORKFLOW, name: None if name != "no_history" else True})  # left out: its default
