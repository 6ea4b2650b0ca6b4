"""A template call against the same job sent as a raw workflow: same pod (DRY_RUN, so ComfyUI's
time does not drown the worker's), same client session, interleaved rounds, medians. The raw
job carries exactly the workflow the template call fills in (values, seed, image). Target: at
most +1 ms. Also the call's preparation alone, in this process (schema, fill, seed, image).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time

import requests

from services.jobs import job_request
from services.jobs.templates import Templates, prepare
from tests.stack import ROOT, Stack
from tests.workflows import png_b64

TEMPLATES = os.path.join(ROOT, "templates")
CASES = {
    "noise-card": {"width": 512, "height": 384, "color": 0x202060, "strength": 0.4},
    "soft-webp": {
        "image": png_b64(64, 64),
        "width": 96,
        "height": 96,
        "scaling": "bicubic",
        "lossless": True,
    },
}
OPTIONS = functools.partial(  # a call's options as the pipeline reads them
    job_request.options, default_timeout_s=600, no_history_default=False, output_format="worker"
)


def raw_job(templates: Templates, name: str, params: dict) -> dict:
    """What the template call becomes, as a client would send it to /run."""
    call = prepare(templates, {"template": name, "params": params}, OPTIONS, lambda url: b"", 0)
    images = [{"name": image.name, "image": params["image"]} for image in call.job.images]
    return {"workflow": call.job.workflow, **({"images": images} if images else {})}


def timed(session: requests.Session, url: str, body: dict) -> float:
    started = time.perf_counter()
    response = session.post(
        url, data=json.dumps(body), headers={"Content-Type": "application/json"}, timeout=30
    )
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise SystemExit(f"{url} answered {response.status_code}: {response.text[:300]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=600)
    args = parser.parse_args()
    templates = Templates((TEMPLATES,), None)
    env = {"DRY_RUN": "1", "ENCRYPTION_REQUIRED": "0", "TEMPLATES_DIR": TEMPLATES}
    with Stack("api", env, key=False) as pod:
        pod.wait_ready()
        session = requests.Session()
        print(f"a template call against the same job as a raw workflow, DRY_RUN pod, median of {args.rounds}")
        for name, params in CASES.items():
            raw, seeded = raw_job(templates, name, params), {**params}
            runs: dict[str, list[float]] = {"raw /run": [], "template": []}
            for round_ in range(args.rounds + 20):
                if "seed" in templates.get(name).params:
                    seeded["seed"] = round_
                raw_s = timed(session, pod.url + "/run", raw)
                template_s = timed(session, f"{pod.url}/templates/{name}/run", seeded)
                if round_ >= 20:  # the first rounds warm both paths up
                    runs["raw /run"].append(raw_s)
                    runs["template"].append(template_s)
            base, call = (1000 * statistics.median(runs[k]) for k in ("raw /run", "template"))
            verdict = "met" if call - base <= 1.0 else "NOT met"
            print(
                f"  {name}: raw {base:.2f} ms, template {call:.2f} ms ({call - base:+.2f} ms; target +1 ms: {verdict})"
            )
    for name, params in CASES.items():
        prepare = []
        for _ in range(2000):
            started = time.perf_counter()
            prepare(templates, {"template": name, "params": params}, OPTIONS, lambda url: b"", 0)
            prepare.append(time.perf_counter() - started)
        print(
            f"  {name}: the call's preparation alone, in process: {1000 * statistics.median(prepare):.3f} ms"
        )


if __name__ == "__main__":
    main()
