"""A template call's parameters: every type accepted at its bounds and refused just past them,
every problem listed at once, integers as integers, seeds drawn and returned, images decoded
under a name of their own, and ComfyUI's node errors told by parameter."""

import base64
import copy
import functools

import pytest

from services.core import errors
from services.jobs import job_request
from services.jobs.templates import SEED_MAX, Templates, prepare
from tests.jobs.templates.test_loading import standin_catalog, write
from tests.workflows import png_b64

WORKFLOW = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}, "_meta": {"title": "Input"}},
    "3": {
        "class_type": "EmptyImage",
        "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 0},
        "_meta": {"title": "Canvas"},
    },
    "5": {
        "class_type": "ImageAddNoise",
        "inputs": {"image": ["3", 0], "seed": 7, "strength": 0.5},
        "_meta": {"title": "Noise"},
    },
    "6": {
        "class_type": "ImageScale",
        "inputs": {"image": ["5", 0], "upscale_method": "area", "width": 8, "height": 8, "crop": "disabled"},
        "_meta": {"title": "Resize"},
    },
    "8": {
        "class_type": "SaveAnimatedWEBP",
        "inputs": {
            "images": ["6", 0],
            "filename_prefix": "kinds",
            "fps": 6.0,
            "lossless": False,
            "quality": 80,
            "method": "default",
        },
        "_meta": {"title": "Save"},
    },
    "9": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "in"}},
}
PARAMS = {
    "width": {"type": "integer", "min": 16, "max": 64, "targets": [{"node": "Canvas", "input": "width"}]},
    "strength": {"type": "number", "max": 0.8, "targets": [{"node": "Noise", "input": "strength"}]},
    "prefix": {
        "type": "string",
        "min_length": 2,
        "max_length": 12,
        "targets": [{"node": "Save", "input": "filename_prefix"}],
    },
    "lossless": {"type": "boolean", "targets": [{"node": "Save", "input": "lossless"}]},
    "crop": {
        "type": "enum",
        "values": ["disabled", "center"],
        "targets": [{"node": "Resize", "input": "crop"}],
    },
    "scaling": {
        "type": "enum",
        "values": "object_info",
        "targets": [{"node": "Resize", "input": "upscale_method"}],
    },
    "seed": {"type": "seed", "targets": [{"node": "Noise", "input": "seed"}]},
    "image": {"type": "image", "targets": [{"node": "Input", "input": "image"}]},
}
IMAGE = png_b64(4, 4)
OPTIONS = functools.partial(  # a call's options as the pipeline reads them
    job_request.options, default_timeout_s=600, no_history_default=False, output_format="worker"
)


def no_fetch(url: str) -> bytes:
    raise errors.ImageFetchFailed("the test serves no URLs")


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    folder = tmp_path_factory.mktemp("templates")
    write(folder, "kinds", WORKFLOW, PARAMS, description="every kind")
    loaded = Templates((str(folder),), standin_catalog())
    loaded.check_with_comfyui(lambda: True)
    assert loaded.view()["rejected"] == []
    return loaded


def call(templates, params, fetch=no_fetch, **options):
    return prepare(templates, {"template": "kinds", "params": params, **options}, OPTIONS, fetch, 0)


def problems(templates, params) -> list[dict]:
    with pytest.raises(errors.InvalidParams) as caught:
        call(templates, params)
    body = caught.value.to_dict()
    assert body["template"] == "kinds" and caught.value.http_status == 400
    return body["details"]


@pytest.mark.parametrize(
    ("param", "good", "bad", "rule"),
    [
        ("width", [16, 64], [15, 65, 32.0, "32", True], ["minimum", "maximum", "type", "type", "type"]),
        (
            "strength",
            [0.0, 0.8, 0],
            [-0.01, 0.81, "0.5", float("nan")],
            ["minimum", "maximum", "type", "type"],
        ),
        ("prefix", ["ab", "x" * 12], ["a", "x" * 13, 5], ["minLength", "maxLength", "type"]),
        ("lossless", [True, False], [1, "true", None], ["type", "type", "type"]),
        ("crop", ["disabled", "center"], ["Center", 0], ["enum", "enum"]),
        ("scaling", ["area", "lanczos"], ["sideways"], ["enum"]),
        ("seed", [0, SEED_MAX, "random"], [-1, SEED_MAX + 1, 1.5, "7"], ["anyOf"] * 4),
    ],
)
def test_every_type_is_accepted_at_its_bounds_and_refused_past_them(templates, param, good, bad, rule):
    for value in good:
        used = call(templates, {"image": IMAGE, param: value}).used
        assert used[param] == value or (
            param == "seed" and value == "random" and isinstance(used[param], int)
        )
    for value, expected in zip(bad, rule, strict=True):
        (detail,) = problems(templates, {"image": IMAGE, param: value})
        assert (detail["param"], detail["rule"]) == (param, expected), value


def test_a_refusal_never_repeats_the_value_sent(templates):
    """The value may be a user's private prompt: the message says what is allowed, not what came."""
    (detail,) = problems(templates, {"image": IMAGE, "prefix": "my secret prompt text"})
    assert detail == {"param": "prefix", "rule": "maxLength", "message": "must have at most 12 characters"}


def test_the_bounds_comfyui_declares_apply_where_the_template_sets_none(templates):
    (detail,) = problems(templates, {"image": IMAGE, "strength": -0.5})
    assert detail == {"param": "strength", "rule": "minimum", "message": "must be at least 0.0"}


def test_every_bad_field_is_listed_at_once(templates):
    details = problems(
        templates, {"width": 1, "strength": 2, "prefix": "", "crop": "no", "seed": -5, "color": 3}
    )
    assert sorted((d["param"], d["rule"]) for d in details) == [
        ("color", "unknown"),
        ("crop", "enum"),
        ("image", "required"),
        ("prefix", "minLength"),
        ("seed", "anyOf"),
        ("strength", "maximum"),
        ("width", "minimum"),
    ]


def test_params_must_be_an_object_and_a_call_sends_no_workflow(templates):
    assert problems(templates, ["width", 3]) == [
        {"param": None, "rule": "type", "message": "'params' must be an object"}
    ]
    with pytest.raises(errors.InvalidRequest, match="a template call sends 'params', not workflow"):
        call(templates, {}, workflow={})
    with pytest.raises(errors.UnknownTemplate):
        prepare(templates, {"template": "nope"}, OPTIONS, no_fetch, 0)


def test_defaults_come_from_the_export_and_the_values_used_are_returned(templates):
    prepared = call(templates, {"image": IMAGE}, timeout_s=30)
    used = prepared.used
    assert {k: used[k] for k in ("width", "strength", "prefix", "lossless", "crop", "scaling")} == {
        "width": 32,
        "strength": 0.5,
        "prefix": "kinds",
        "lossless": False,
        "crop": "disabled",
        "scaling": "area",
    }
    assert prepared.job.timeout_s == 30
    assert prepared.job.workflow["5"]["inputs"]["seed"] == used["seed"] != 7
    assert WORKFLOW["5"]["inputs"]["seed"] == 7  # the template itself is never changed


def test_seeds_are_drawn_anew_for_each_call_and_a_given_one_is_kept(templates):
    drawn = {call(templates, {"image": IMAGE}).used["seed"] for _ in range(20)}
    assert len(drawn) == 20 and all(0 <= seed <= SEED_MAX for seed in drawn)
    assert call(templates, {"image": IMAGE, "seed": 12345}).job.workflow["5"]["inputs"]["seed"] == 12345


def test_an_image_lands_under_a_name_of_its_own(templates):
    data = base64.b64decode(IMAGE)
    first = call(templates, {"image": "data:image/png;base64," + IMAGE})
    second = call(templates, {"image": IMAGE})
    (image,) = first.job.images
    assert image.data == data and image.name.startswith("image-") and image.name.endswith(".png")
    assert first.job.workflow["1"]["inputs"]["image"] == image.name != second.job.images[0].name
    assert first.used["image"] == {
        "bytes": len(data),
        "sha256": __import__("hashlib").sha256(data).hexdigest(),
    }
    assert problems(templates, {"image": "bm90IGFuIGltYWdl"}) == [
        {"param": "image", "rule": "image", "message": "is not a PNG, JPEG, WEBP, GIF, BMP or TIFF image"}
    ]
    assert problems(templates, {"image": "%%%"})[0]["rule"] == "image"
    fetched = call(templates, {"image": "https://example.invalid/a.png"}, fetch=lambda url: data)
    assert fetched.job.images[0].data == data and fetched.used["image"] == "https://example.invalid/a.png"
    refused = problems(templates, {"image": "https://example.invalid/a.png"})
    assert refused == [{"param": "image", "rule": "image", "message": "the test serves no URLs"}]


def test_a_live_list_takes_a_value_comfyui_offers_only_after_start(tmp_path):
    workflow = {
        "1": {
            "class_type": "CheckpointLoaderSimple",
            "inputs": {"ckpt_name": "a.safetensors"},
            "_meta": {"title": "Model"},
        }
    }
    write(
        tmp_path,
        "ckpt",
        workflow,
        {
            "model": {
                "type": "enum",
                "values": "object_info",
                "targets": [{"node": "Model", "input": "ckpt_name"}],
            }
        },
    )
    offered = ["a.safetensors"]
    catalog = standin_catalog()
    catalog._node_info = lambda cls: {"input": {"required": {"ckpt_name": [list(offered), {}]}}}
    templates = Templates((str(tmp_path),), catalog)
    templates.check_with_comfyui(lambda: True)
    payload = {"template": "ckpt", "params": {"model": "new.safetensors"}}
    with pytest.raises(errors.InvalidParams):
        prepare(templates, payload, OPTIONS, no_fetch, 0)
    offered.append("new.safetensors")  # a file placed on the volume
    assert prepare(templates, payload, OPTIONS, no_fetch, 0).used == {"model": "new.safetensors"}


def test_a_comfyui_node_error_on_a_filled_input_is_told_by_parameter(templates):
    prepared = call(templates, {"image": IMAGE})
    refused = errors.WorkflowValidationFailed(
        "node 8 (SaveAnimatedWEBP): Value not in list",
        {
            "8": {
                "errors": [
                    {
                        "type": "value_not_in_list",
                        "message": "Value not in list",
                        "details": "filename_prefix: 'kinds' not in []",
                        "extra_info": {"input_name": "filename_prefix"},
                    }
                ],
                "class_type": "SaveAnimatedWEBP",
            }
        },
    )
    told = prepared.explain(refused)
    assert isinstance(told, errors.InvalidParams)
    assert told.to_dict()["details"] == [
        {
            "param": "prefix",
            "rule": "comfyui",
            "message": "Value not in list: filename_prefix: 'kinds' not in []",
        }
    ]
    unexplained = copy.deepcopy(refused.node_errors)
    unexplained["8"]["errors"][0]["extra_info"]["input_name"] = "fps"
    other = prepared.explain(errors.WorkflowValidationFailed("node 8: fps", unexplained))
    assert isinstance(other, errors.TemplateError)
    assert other.to_dict() == {
        "error": "template_error: template 'kinds': node 8: fps",
        "template": "kinds",
        "node_errors": unexplained,
    }


def test_only_an_image_parameter_takes_an_attachment(templates):
    """An envelope v2's attachment (bytes) for a string, enum or number passed the schema as the
    word "attachment" and broke later with a 500: it is `invalid_params` naming the parameter."""
    data = base64.b64decode(IMAGE)
    assert call(templates, {"image": data}).job.images[0].data == data
    assert problems(templates, {"image": IMAGE, "prefix": data, "crop": data, "width": data}) == [
        {"param": name, "rule": "type", "message": "takes no attachment (only an image parameter does)"}
        for name in ("prefix", "crop", "width")
    ]
