"""/docs in a real browser: Swagger UI renders the live OpenAPI document with an operation per
template, and "Try it out" -> "Execute" in the page runs a template on the pod (the stand-in
ComfyUI) and shows its result. On failure the page's screenshot is saved and its path said."""

import os

import pytest

from tests.browser import Browser, screenshot_dir
from tests.stack import ROOT, Stack


@pytest.fixture(scope="module")
def pod():
    env = {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0", "TEMPLATES_DIR": os.path.join(ROOT, "templates")}
    stack = Stack("api", env).ready()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def page(pod, request):
    failed_before = request.session.testsfailed
    with Browser() as browser:
        browser.open(pod.url + "/docs")
        yield browser
        if request.session.testsfailed > failed_before:  # this test's call failed
            path = os.path.join(screenshot_dir(), f"{request.node.name}.png")
            print(f"screenshot of the page: {browser.screenshot(path)}")


def operation(name: str) -> str:
    return f"document.querySelector('#operations-templates-run_{name.replace('-', '_')}')"


def test_the_page_lists_an_operation_per_template(page):
    page.wait_for(
        f"!!{operation('noise-card')} && !!{operation('soft-webp')}", 60, "the templates' operations"
    )
    summary = page.eval(f"{operation('noise-card')}.innerText")
    assert "/templates/noise-card/run" in summary and "seeded noise" in summary
    assert page.eval("document.querySelector('.info .title').innerText").startswith("comfy-worker pod API")


def test_try_it_out_runs_a_template_from_the_page(page):
    block = operation("noise-card")
    page.wait_for(f"!!{block}", 60, "the noise-card operation")
    page.eval(f"{block}.querySelector('.opblock-summary-control').click()")
    page.wait_for(
        f"!!{block}.querySelector('textarea.body-param__text')", 20, "the body editor (try it out is on)"
    )
    body = page.eval(f"{block}.querySelector('textarea.body-param__text').value")
    assert '"seed": "random"' in body and '"width": 256' in body  # the example, as sent
    page.eval(f"{block}.querySelector('button.execute').click()")
    status = page.wait_for(
        f"(() => {{ const c = {block}.querySelector('.live-responses-table tbody .response-col_status');"
        " return c && c.innerText.trim(); })()",
        60,
        "the call's answer",
    )
    assert status.startswith("200"), status
    shown = page.eval(
        f"{block}.querySelector('.live-responses-table tbody .response-col_description').innerText"
    )
    assert '"params"' in shown and '"seed"' in shown and "noise-card_" in shown
