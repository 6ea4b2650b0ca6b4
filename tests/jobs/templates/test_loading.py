"""Loading templates: titles resolved once (a re-export that renumbers the nodes changes nothing),
every structural fault refused with the template, parameter and target named, ComfyUI's
declared inputs applied (here as the stand-in declares them, which mirrors ComfyUI's
/object_info), and a bad template never stops the others."""

import json
import os
import re
import shutil

import pytest

from services.core import errors, schema_check
from services.jobs.templates import Catalog, Templates, call_schema, loading
from services.jobs.templates.template import Target, TemplateLoadError
from tests.comfy_standin.main import NODES
from tests.stack import ROOT

EXAMPLES = os.path.join(ROOT, "templates")


def standin_catalog(extra_checkpoints: tuple[str, ...] = ()) -> Catalog:
    def node_info(class_type: str) -> dict:
        info = json.loads(json.dumps(NODES.get(class_type, {})))
        if class_type == "CheckpointLoaderSimple":
            info["input"]["required"]["ckpt_name"][0] = list(extra_checkpoints)
        return info

    return Catalog(node_info)


def write(folder, name: str, workflow: dict, params: dict, **spec) -> str:
    path = os.path.join(str(folder), name)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "workflow.json"), "w") as handle:
        json.dump(workflow, handle)
    with open(os.path.join(path, "template.json"), "w") as handle:
        json.dump({"params": params, **spec}, handle)
    return path


def canvas(**titles) -> dict:
    """EmptyImage -> SaveImage, titled."""
    return {
        "3": {
            "class_type": "EmptyImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0},
            "_meta": {"title": titles.get("canvas", "Canvas")},
        },
        "9": {
            "class_type": "SaveImage",
            "inputs": {"images": ["3", 0], "filename_prefix": "t"},
            "_meta": {"title": titles.get("save", "Save")},
        },
    }


def renumbered(workflow: dict, offset: int) -> dict:
    """What a re-export does: new node ids, links rewritten, titles kept."""
    new = {node_id: str(int(node_id) + offset) for node_id in workflow}
    out = {}
    for node_id, node in workflow.items():
        inputs = {
            k: [new[v[0]], v[1]] if isinstance(v, list) and len(v) == 2 and v[0] in new else v
            for k, v in node["inputs"].items()
        }
        out[new[node_id]] = {**node, "inputs": inputs}
    return out


def test_the_repository_examples_load_and_pass_the_check_against_comfyui():
    templates = Templates((EXAMPLES,), standin_catalog())
    templates.check_with_comfyui(lambda: True)
    assert templates.view() == {
        "serving": ["noise-card", "soft-webp"],
        "rejected": [],
        "checked_with_comfyui": True,
    }


def test_titles_survive_a_re_export_that_renumbers_the_nodes(tmp_path):
    shutil.copytree(os.path.join(EXAMPLES, "noise-card"), tmp_path / "noise-card")
    with open(tmp_path / "noise-card" / "workflow.json") as handle:
        original = json.load(handle)
    with open(tmp_path / "noise-card" / "workflow.json", "w") as handle:
        json.dump(renumbered(original, 40), handle)
    before = loading.load(os.path.join(EXAMPLES, "noise-card"))
    after = loading.load(str(tmp_path / "noise-card"))
    assert before.params["seed"].targets == (Target("5", "seed"),)
    assert after.params["seed"].targets == (Target("45", "seed"),)
    assert call_schema.schema(before) == call_schema.schema(after)


def test_a_title_on_several_nodes_needs_all_and_then_fills_every_one(tmp_path):
    workflow = {**canvas(), "4": {**canvas()["3"], "_meta": {"title": "Canvas"}}}
    workflow["9"]["inputs"]["images"] = ["4", 0]
    target = {"node": "Canvas", "input": "width"}
    with pytest.raises(TemplateLoadError, match=r"2 nodes have this title \(nodes 3, 4\)"):
        loading.load(write(tmp_path, "twice", workflow, {"w": {"type": "integer", "targets": [target]}}))
    both = loading.load(
        write(tmp_path, "both", workflow, {"w": {"type": "integer", "targets": [{**target, "all": True}]}})
    )
    assert both.params["w"].targets == (Target("3", "width"), Target("4", "width"))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"w": {"type": "integer", "targets": [{"node": "Nowhere", "input": "width"}]}},
            r"target 'Nowhere'\.width: no node has this title or id",
        ),
        (
            {"w": {"type": "integer", "targets": [{"node": "Canvas", "input": "depth"}]}},
            r"node 3 \(EmptyImage\) has no input 'depth'",
        ),
        (
            {"w": {"type": "string", "targets": [{"node": "Save", "input": "images"}]}},
            r"input 'images' of node 9 is linked to another node",
        ),
        (
            {"w": {"type": "float", "targets": [{"node": "Canvas", "input": "width"}]}},
            r"'type' must be one of",
        ),
        (
            {"w": {"type": "integer", "min": 9, "max": 3, "targets": [{"node": "Canvas", "input": "width"}]}},
            r"min 9 is above max 3",
        ),
        (
            {"w": {"type": "integer", "min": 100, "targets": [{"node": "Canvas", "input": "width"}]}},
            r"its default 64 breaks minimum",
        ),
        (
            {"w": {"type": "boolean", "min": 1, "targets": [{"node": "Canvas", "input": "width"}]}},
            r"'min' does not apply to type boolean",
        ),
        (
            {"w": {"type": "enum", "values": [], "targets": [{"node": "Canvas", "input": "width"}]}},
            r"'values' must be a non-empty list",
        ),
        ({"w": {"type": "integer", "targets": []}}, r"'targets' must be a non-empty list"),
        (
            {"bad-name": {"type": "integer", "targets": [{"node": "Canvas", "input": "width"}]}},
            r"a parameter name must match",
        ),
    ],
    ids=[
        "no-node",
        "no-input",
        "linked",
        "bad-type",
        "inverted",
        "default-out",
        "bound-kind",
        "no-values",
        "no-targets",
        "bad-name",
    ],
)
def test_a_structural_fault_is_a_load_error_naming_template_parameter_and_target(tmp_path, params, message):
    with pytest.raises(TemplateLoadError, match=message) as caught:
        loading.load(write(tmp_path, "broken", canvas(), params))
    assert str(caught.value).startswith("broken: ")


def test_a_node_is_found_by_id_when_no_title_matches(tmp_path):
    template = loading.load(
        write(
            tmp_path,
            "by-id",
            canvas(),
            {"w": {"type": "integer", "targets": [{"node": 3, "input": "width"}]}},
        )
    )
    assert template.params["w"].targets == (Target("3", "width"),)


def test_missing_or_unreadable_files_are_load_errors(tmp_path):
    os.makedirs(tmp_path / "empty")
    with pytest.raises(TemplateLoadError, match=r"empty: template\.json is missing"):
        loading.load(str(tmp_path / "empty"))
    path = write(tmp_path, "ui-export", {"nodes": [], "links": []}, {})
    with pytest.raises(TemplateLoadError, match=r"workflow\.json: this is a UI graph export"):
        loading.load(path)
    with pytest.raises(TemplateLoadError, match="folder name must match"):
        loading.load(write(tmp_path, "Upper Case", canvas(), {}))


@pytest.mark.parametrize(
    ("param", "message"),
    [
        (
            {"type": "integer", "min": 0, "targets": [{"node": "Canvas", "input": "width"}]},
            r"min 0 is outside ComfyUI's min 1 of EmptyImage\.width",
        ),
        (
            {"type": "integer", "max": 20000, "targets": [{"node": "Canvas", "input": "width"}]},
            r"max 20000 is outside ComfyUI's max 16384",
        ),
        (
            {"type": "boolean", "default": True, "targets": [{"node": "Canvas", "input": "width"}]},
            r"EmptyImage\.width takes INT, not a boolean",
        ),
        (
            {"type": "integer", "default": 1, "targets": [{"node": "Noise", "input": "strength"}]},
            r"takes a FLOAT; use type number",
        ),
        (
            {
                "type": "enum",
                "values": ["area", "sideways"],
                "targets": [{"node": "Resize", "input": "upscale_method"}],
            },
            r"does not offer \['sideways'\]",
        ),
        (
            {"type": "enum", "values": "object_info", "targets": [{"node": "Canvas", "input": "color"}]},
            r"takes INT, not one of a list",
        ),
        (
            {"type": "string", "targets": [{"node": "Mystery", "input": "text"}]},
            r"has no input 'text' \(unknown node class\)",
        ),
    ],
    ids=[
        "widened-min",
        "widened-max",
        "bool-on-int",
        "int-on-float",
        "values-refused",
        "live-on-int",
        "unknown-class",
    ],
)
def test_the_check_against_comfyui_refuses_what_comfyui_would(tmp_path, param, message):
    workflow = {
        **canvas(),
        "5": {
            "class_type": "ImageAddNoise",
            "inputs": {"image": ["3", 0], "seed": 1, "strength": 0.5},
            "_meta": {"title": "Noise"},
        },
        "6": {
            "class_type": "ImageScale",
            "inputs": {
                "image": ["5", 0],
                "upscale_method": "area",
                "width": 8,
                "height": 8,
                "crop": "disabled",
            },
            "_meta": {"title": "Resize"},
        },
        "7": {"class_type": "Mystery", "inputs": {"text": "x"}, "_meta": {"title": "Mystery"}},
    }
    write(tmp_path, "judged", workflow, {"p": param})
    write(
        tmp_path,
        "fine",
        canvas(),
        {"w": {"type": "integer", "max": 512, "targets": [{"node": "Canvas", "input": "width"}]}},
    )
    templates = Templates((str(tmp_path),), standin_catalog())
    templates.check_with_comfyui(lambda: True)
    assert templates.view()["serving"] == ["fine"]
    (rejected,) = templates.view()["rejected"]
    assert rejected["name"] == "judged"
    assert rejected["reason"].startswith("judged: parameter 'p'")
    assert re.search(message, rejected["reason"]), rejected["reason"]


def test_a_template_narrows_comfyuis_bounds_and_inherits_the_rest(tmp_path):
    write(
        tmp_path,
        "narrow",
        canvas(),
        {"w": {"type": "integer", "max": 512, "targets": [{"node": "Canvas", "input": "width"}]}},
    )
    templates = Templates((str(tmp_path),), standin_catalog())
    templates.check_with_comfyui(lambda: True)
    declared = call_schema.schema(templates.get("narrow"))
    assert declared["properties"]["w"] == {"type": "integer", "minimum": 1, "maximum": 512, "default": 64}
    assert declared["additionalProperties"] is False and declared["$schema"] == call_schema.DIALECT


def test_a_bad_template_is_rejected_at_load_while_the_others_serve(tmp_path):
    shutil.copytree(os.path.join(EXAMPLES, "noise-card"), tmp_path / "noise-card")
    write(
        tmp_path,
        "broken",
        canvas(),
        {"w": {"type": "integer", "targets": [{"node": "Gone", "input": "width"}]}},
    )
    templates = Templates((str(tmp_path),), None)
    assert templates.view()["serving"] == ["noise-card"]
    assert templates.view()["rejected"] == [
        {
            "name": "broken",
            "reason": "broken: parameter 'w', target 'Gone'.width: no node has this title or id",
        }
    ]
    with pytest.raises(errors.UnknownTemplate) as caught:
        templates.get("broken")
    assert caught.value.message.startswith(
        "unknown_template: template 'broken' was rejected: broken: parameter 'w'"
    )
    assert caught.value.http_status == 404


def test_the_first_folder_wins_a_name_both_have(tmp_path):
    for folder, width in (("volume", 100), ("image", 200)):
        workflow = canvas()
        workflow["3"]["inputs"]["width"] = width
        write(
            tmp_path / folder,
            "same",
            workflow,
            {"w": {"type": "integer", "targets": [{"node": "Canvas", "input": "width"}]}},
        )
    templates = Templates((str(tmp_path / "volume"), str(tmp_path / "image")), None)
    assert templates.get("same").params["w"].default == 100


def test_the_example_body_runs_as_it_is():
    for name in ("noise-card", "soft-webp"):
        template = loading.load(os.path.join(EXAMPLES, name))
        body = call_schema.example(template)
        assert list(schema_check.Validator(call_schema.schema(template)).iter_errors(body)) == []
    assert call_schema.example(loading.load(os.path.join(EXAMPLES, "noise-card")))["seed"] == "random"
