"""Property-based checks of every request reader of the pod API (hypothesis): JSON bodies,
envelope v1, envelope v2 and plain parts, template parameters, and the URLs a job or a download
names. Whatever arrives, the answer is a coded error or a result, never a 500 or a traceback,
and the memory one request costs stays within a small multiple of its body.

`make test` runs a fixed, small set of examples per reader; `HYPOTHESIS_PROFILE=fuzz pytest
tests/api/test_request_fuzz.py` runs many more, freshly drawn. No name is looked up: the
resolver answers IP literals only, so no request leaves this machine.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import struct
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.public import Box, PrivateKey, PublicKey
from nacl.utils import random

from client.envelope_client import V2_MAGIC, seal_request
from services.api.app import create_app
from services.core import config
from services.core.codec import unb64
from services.jobs import envelopes
from services.jobs.envelopes import v2
from services.models import url_guard

PRIVATE, PUBLIC = envelopes.keypair()
TEMPLATES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "templates")
CODE = re.compile(r"^[a-z_ ]+(: |$)")
BOUND_TIMES, BOUND_EXTRA = 16, 4 << 20  # a request's peak: 16 x its body + 4 MiB
WORST: dict = {"peak": 0}  # the request whose peak came nearest the bound (said at the end)

settings.register_profile(
    "ci",
    max_examples=60,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "fuzz",
    max_examples=20000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="module", autouse=True)
def literal_addresses_only():
    """Names resolve to nothing (a DNS query would leave the machine); IP literals as they are."""
    real = socket.getaddrinfo

    def numeric(host, port, *args, **kwargs):
        return real(host, port, *args, flags=socket.AI_NUMERICHOST)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(url_guard.socket, "getaddrinfo", numeric)
        yield


def app_client(encryption_required: bool, tmp: str):
    env = {
        "WORKER_PRIVATE_KEY_B64": PRIVATE,
        "ENCRYPTION_REQUIRED": "1" if encryption_required else "0",
        "LAUNCH_MODE": "api",
        "DRY_RUN": "1",
        "RUN_DIR": tmp,
        "COMFYUI_MODEL_DIR": os.path.join(tmp, "models"),
        "TEMPLATES_DIR": TEMPLATES,
        "ALLOW_PRIVATE_DOWNLOADS": "0",
    }
    return create_app(config.load(env)).test_client()


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return app_client(False, str(tmp_path_factory.mktemp("plain")))


@pytest.fixture(scope="module")
def sealed(tmp_path_factory):
    return app_client(True, str(tmp_path_factory.mktemp("sealed")))


# what arrives ------------------------------------------------------------------------------------
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)
hosts = st.sampled_from(
    ["example.com", "127.0.0.1", "[::1", "[::1]", "h:70000", "h:port", "", "a..b", "x" * 70]
)
urls = st.one_of(
    st.text(max_size=60),
    st.builds(
        lambda scheme, host, path: f"{scheme}://{host}/{path}",
        st.sampled_from(["http", "https", "ftp", "HTTP", ""]),
        hosts | st.text(max_size=20),
        st.text(max_size=20),
    ),
)
nodes = st.dictionaries(
    st.text(min_size=1, max_size=4),
    st.fixed_dictionaries({"class_type": st.sampled_from(["SaveImage", "LoadImage", "X"]), "inputs": values}),
    max_size=4,
)
images = st.lists(
    st.fixed_dictionaries({"name": st.text(max_size=12)}, optional={"image": values, "url": urls}),
    max_size=3,
)
jobs = st.fixed_dictionaries(
    {},
    optional={
        "workflow": nodes | values,
        "images": images | values,
        "webhook": urls | values,
        "timeout": values,
        "models": st.lists(st.fixed_dictionaries({"type": st.text(max_size=8), "url": urls}), max_size=2),
        "ts": values,
        "no_history": values,
        "output_format": values,
        "template": st.sampled_from(["soft-webp", "noise-card", "nope"]) | values,
        "params": values,
    },
)
bodies = jobs | values
blobs = st.binary(max_size=2048)


def parts(head: bytes, attachments: list[bytes]) -> bytes:
    return b"".join(struct.pack(">Q", len(p)) + p for p in (head, *attachments))


v2_payloads = st.builds(
    lambda job, refs, attachments: json.dumps(
        {**job, "images": [{"name": "a.png", "image": {"attachment": n}} for n in refs]}
    ).encode(),
    jobs,
    st.lists(st.integers(-2, 6), max_size=40),
    st.lists(blobs, max_size=6),
)
v2_bodies = st.builds(parts, v2_payloads | blobs, st.lists(blobs, max_size=6)) | blobs


def hand_sealed(plaintext: bytes, kid: bytes) -> bytes:
    ephemeral, nonce = PrivateKey.generate(), random(24)
    box = Box(ephemeral, PublicKey(unb64(PUBLIC))).encrypt(plaintext, nonce).ciphertext
    return V2_MAGIC + kid + bytes(ephemeral.public_key) + nonce + box


# the checks --------------------------------------------------------------------------------------
def answered(client, path: str, data: bytes, content_type: str, caplog) -> None:
    """No 500, a coded error when it failed, nothing `unexpected` logged, memory bounded."""
    caplog.clear()
    tracemalloc.start()
    try:
        answer = client.post(path, data=data, content_type=content_type)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert answer.status_code < 500, answer.get_data()[:300]
    if answer.status_code >= 400 and answer.mimetype == "application/json":
        body = answer.get_json()
        assert "ciphertext" in body or CODE.match(body["error"]), body  # sealed: the job's own error
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert peak <= BOUND_TIMES * len(data) + BOUND_EXTRA, (peak, len(data))
    if peak - BOUND_TIMES * len(data) > WORST["peak"] - BOUND_TIMES * WORST.get("size", 0):
        WORST.update(peak=peak, size=len(data), path=path, head=data[:120], status=answer.status_code)


@pytest.fixture(scope="module", autouse=True)
def worst_said():
    yield
    if WORST.get("size") is not None:
        print(
            f"\n[fuzz] worst peak {WORST['peak'] / 1024:.0f} KiB for a {WORST['size']}-byte body to "
            f"{WORST['path']} ({WORST['status']}): {WORST['head']!r}"
        )


@given(body=bodies)
def test_json_bodies_to_every_job_route(plain, sealed, caplog, body):
    data = json.dumps(body).encode()
    for client in (plain, sealed):
        for path in ("/run", "/run?async=1", "/templates/soft-webp/run", "/v2/x/runsync", "/download"):
            answered(client, path, data, "application/json", caplog)


@given(body=st.binary(max_size=4096))
def test_bytes_that_are_no_json(plain, caplog, body):
    answered(plain, "/run", body, "application/json", caplog)


@given(payload=jobs, kid=st.none() | st.sampled_from(["", "0" * 16, "zz"]) | st.text(max_size=20))
def test_envelope_v1_around_any_payload(sealed, caplog, payload, kid):
    body, _ = seal_request(payload, PUBLIC)
    if kid is not None:
        body["kid"] = kid
    answered(sealed, "/run", json.dumps(body).encode(), "application/json", caplog)


@given(fields=st.dictionaries(st.sampled_from(["encrypted", "kid", "epk", "nonce", "ciphertext"]), values))
def test_envelope_v1_shaped_bodies(sealed, caplog, fields):
    answered(sealed, "/run", json.dumps({"encrypted": True, **fields}).encode(), "application/json", caplog)


@given(plaintext=v2_bodies, kid=st.sampled_from([bytes(8), b"\x01" * 8]))
def test_envelope_v2_around_any_parts(sealed, caplog, plaintext, kid):
    for path in ("/run", "/templates/soft-webp/run"):
        answered(sealed, path, hand_sealed(plaintext, kid), envelopes.MEDIA_TYPE, caplog)
    answered(sealed, "/run", V2_MAGIC + plaintext, envelopes.MEDIA_TYPE, caplog)


@given(body=v2_bodies)
def test_plain_parts(plain, sealed, caplog, body):
    for client in (plain, sealed):
        for path in ("/run", "/templates/soft-webp/run", "/templates/noise-card/run"):
            answered(client, path, v2.PLAIN_MAGIC + body, envelopes.PLAIN_MEDIA_TYPE, caplog)


@given(params=st.dictionaries(st.sampled_from(["image", "width", "height", "scaling", "x"]), values | urls))
def test_template_parameters(plain, caplog, params):
    for name in ("soft-webp", "noise-card"):
        answered(plain, f"/templates/{name}/run", json.dumps(params).encode(), "application/json", caplog)


@given(url=urls)
def test_urls_a_job_or_a_download_names(plain, caplog, url):
    job = {"workflow": {"1": {"class_type": "SaveImage", "inputs": {}}}}
    for path, body in (
        ("/run", {**job, "webhook": url}),
        ("/run?async=1", {**job, "webhook": url}),
        ("/run", {**job, "images": [{"name": "a.png", "url": url}]}),
        ("/download", [{"type": "vae", "url": url}]),
        ("/templates/soft-webp/run", {"image": url, "width": 64, "height": 64}),
    ):
        answered(plain, path, json.dumps(body).encode(), "application/json", caplog)
