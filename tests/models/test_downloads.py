"""Downloads against loopback servers: whole or absent, resumed, verified, deduplicated."""

import hashlib
import os
import subprocess

import pytest

from services.core import config, errors
from services.models import url_guard
from services.models.downloads import Downloads
from services.models.transfer import CHUNK, Sink
from tests.file_server import FileServer

DATA = os.urandom(3 * 1024 * 1024 + 123)
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def server():
    server = FileServer()
    server.files = {
        "model.safetensors": DATA,
        "org/repo@main/sub/w.safetensors": DATA,
        "org/repo@v2/w.bin": DATA[:1000],
    }
    yield server
    server.stop()


@pytest.fixture
def downloads(tmp_path, server):
    settings = config.load(
        {
            "ENCRYPTION_REQUIRED": "0",
            "COMFYUI_MODEL_DIR": str(tmp_path / "models"),
            "ALLOW_PRIVATE_DOWNLOADS": "1",
            "HF_ENDPOINT": server.url,
            "HF_TOKEN": "hf-secret-token",
        }
    )
    return Downloads(settings)


def finish(downloads, items):
    started = downloads.submit(items)
    for download in started:
        assert download.ended.wait(60)
    return started


def files_in(folder):
    """Every file but the cache's bookkeeping (services.models.model_cache)."""
    found = (os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)
    return sorted(name for name in found if not name.startswith(".cache/"))


def test_url_download_lands_whole_under_its_final_name(downloads, server, tmp_path):
    [d] = finish(
        downloads, [{"type": "checkpoints", "url": f"{server.url}/file/model.safetensors", "sha256": SHA}]
    )
    assert d.state == "done" and d.bytes_done == d.total == len(DATA), d.view()
    assert (tmp_path / "models/checkpoints/model.safetensors").read_bytes() == DATA
    assert files_in(tmp_path / "models") == ["checkpoints/model.safetensors"]


def test_target_name_with_subfolder(downloads, server, tmp_path):
    finish(
        downloads,
        [
            {
                "type": "loras",
                "url": f"{server.url}/file/model.safetensors",
                "filename": "sdxl/style.safetensors",
            }
        ],
    )
    assert (tmp_path / "models/loras/sdxl/style.safetensors").stat().st_size == len(DATA)


def test_a_present_file_answers_exists_without_a_transfer(downloads, server):
    item = {"type": "vae", "url": f"{server.url}/file/model.safetensors", "sha256": SHA}
    finish(downloads, [item])
    count = len(server.requests)
    [again] = finish(downloads, [item])
    [probe] = server.requests[count:]  # one request, for one byte
    assert again.state == "exists" and probe["range"] == "bytes=0-0" and probe["sent"] <= 1


def test_two_requests_for_one_target_share_one_transfer(downloads, server):
    server.rate = 4 * 1024 * 1024
    item = {"type": "unet", "url": f"{server.url}/slow/model.safetensors"}
    first = downloads.submit([item])[0]
    second = downloads.submit([item])[0]
    assert first is second
    assert first.ended.wait(60) and first.state == "done"
    assert len([r for r in server.requests if "/slow/" in r["path"]]) == 1


def test_a_dropped_connection_resumes_with_a_range_request(downloads, server, tmp_path):
    [d] = finish(downloads, [{"type": "clip", "url": f"{server.url}/drop/model.safetensors", "sha256": SHA}])
    assert d.state == "done", d.view()
    ranges = [r["range"] for r in server.requests if "/drop/" in r["path"]]
    resumed_at = int(ranges[1].removeprefix("bytes=").rstrip("-"))
    assert ranges[0] is None and len(DATA) // 2 - CHUNK <= resumed_at <= len(DATA) // 2
    assert server.bytes_sent("model.safetensors") <= len(DATA) + CHUNK  # at most one chunk again
    assert (tmp_path / "models/clip/model.safetensors").read_bytes() == DATA


def resident(path):
    """Bytes of the file in the page cache (util-linux fincore)."""
    done = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)], capture_output=True
    )
    return int(done.stdout)


def test_a_transfer_holds_two_windows_of_page_cache_and_leaves_none(downloads, server, tmp_path, monkeypatch):
    """A 20 GB model must neither push the pod's memory out for page cache nor leave gigabytes
    dirty for the fsync before the rename."""
    kind = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True).stdout
    if kind.strip() == "tmpfs":
        pytest.skip("on tmpfs the page cache is the file itself")
    window = 256 * 1024
    monkeypatch.setattr(Sink, "WINDOW", window)
    server.files["big.safetensors"] = os.urandom(8 * 1024 * 1024)
    held = []
    write = Sink.write

    def measured(sink, chunk):
        write(sink, chunk)
        held.append(resident(sink.handle.name))

    monkeypatch.setattr(Sink, "write", measured)
    [d] = finish(downloads, [{"type": "vae", "url": f"{server.url}/file/big.safetensors"}])
    assert d.state == "done", d.view()
    assert held and max(held) <= 2 * (window + CHUNK), held
    assert resident(tmp_path / "models/vae/big.safetensors") == 0


def test_checksum_mismatch_removes_the_file(downloads, server, tmp_path):
    [d] = finish(
        downloads,
        [{"type": "checkpoints", "url": f"{server.url}/file/model.safetensors", "sha256": "0" * 64}],
    )
    assert d.state == "failed" and d.error.startswith("checksum_mismatch")
    assert files_in(tmp_path / "models") == []


def test_a_server_that_lies_about_the_size_never_yields_a_file(downloads, server, tmp_path):
    [d] = finish(downloads, [{"type": "checkpoints", "url": f"{server.url}/lie/model.safetensors"}])
    assert d.state == "failed" and d.error.startswith("download_failed")
    assert not (tmp_path / "models/checkpoints/model.safetensors").exists()


def test_hugging_face_file_in_a_subfolder_with_token(downloads, server, tmp_path):
    [d] = finish(
        downloads,
        [{"type": "diffusion_models", "repo_id": "org/repo", "filename": "sub/w.safetensors", "sha256": SHA}],
    )
    assert d.state == "done" and d.view()["source"] == "hf://org/repo/sub/w.safetensors"
    assert (tmp_path / "models/diffusion_models/w.safetensors").read_bytes() == DATA
    assert server.requests[-1]["auth"] == "Bearer hf-secret-token"
    assert "hf-secret-token" not in str(d.view())


def test_hugging_face_revision(downloads, server, tmp_path):
    [d] = finish(
        downloads,
        [
            {
                "type": "vae",
                "repo_id": "org/repo",
                "filename": "w.bin",
                "revision": "v2",
                "target": "old/w.bin",
            }
        ],
    )
    assert d.state == "done" and (tmp_path / "models/vae/old/w.bin").read_bytes() == DATA[:1000]


def test_missing_file_is_a_failed_download(downloads, server):
    [d] = finish(downloads, [{"type": "vae", "url": f"{server.url}/file/nope.bin"}])
    assert d.state == "failed" and d.error == "download_failed: the server answered HTTP 404"


def test_a_bug_fails_the_download_with_a_code_instead_of_leaving_it_running(downloads, server, monkeypatch):
    def bug(*_args):
        raise KeyError("a token in the message")

    monkeypatch.setattr(downloads.transfer, "_check_space", bug)
    [d] = finish(downloads, [{"type": "vae", "url": f"{server.url}/file/model.safetensors"}])
    assert d.state == "failed" and d.error == "internal_error: unexpected worker error"
    assert "token" not in str(d.view()) and downloads.active == {}
    [again] = finish(downloads, [{"type": "vae", "url": f"{server.url}/file/model.safetensors"}])
    assert again.state == "failed"  # not stuck behind a transfer that never ends


def test_not_enough_disk_space(downloads, server, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 5))
    [d] = finish(downloads, [{"type": "vae", "url": f"{server.url}/file/model.safetensors"}])
    assert d.state == "failed" and d.error.startswith("insufficient_space")


@pytest.mark.parametrize(
    "item,code",
    [
        ({"type": "nope", "url": "http://127.0.0.1/x"}, "invalid_target"),
        ({"type": "vae", "url": "http://127.0.0.1/x", "filename": "../escape.bin"}, "invalid_target"),
        ({"type": "vae", "url": "http://127.0.0.1/x", "filename": "/etc/passwd"}, "invalid_target"),
        ({"type": "vae", "url": "http://127.0.0.1/x", "filename": "a\x00b"}, "invalid_target"),
        ({"type": "vae", "url": "http://127.0.0.1/x", "filename": "cafe\u0301.bin"}, "invalid_target"),
        ({"type": "vae", "url": "http://127.0.0.1/x", "filename": ".hidden.part"}, "invalid_target"),
        ({"type": "vae", "url": "ftp://example.com/x"}, "url_not_allowed"),
        ({"type": "vae", "url": "http://[::1/x"}, "url_not_allowed"),
        ({"type": "vae", "url": "http://example.com:70000/x"}, "url_not_allowed"),
        ({"type": "vae", "url": "http://127.0.0.1/x", "sha256": "xyz"}, "invalid_request"),
        ({"type": "vae"}, "invalid_request"),
        ({"type": "vae", "repo_id": "a/b"}, "invalid_request"),
    ],
)
def test_bad_items_are_refused_before_anything_starts(downloads, item, code):
    with pytest.raises(errors.WorkerError) as info:
        downloads.submit([item])
    assert info.value.code == code
    assert downloads.all() == []


def test_a_symlink_out_of_the_root_is_refused(downloads, tmp_path):
    (tmp_path / "models" / "vae").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", tmp_path / "models" / "vae" / "link")
    with pytest.raises(errors.InvalidTarget):
        downloads.submit([{"type": "vae", "url": "http://127.0.0.1/x", "filename": "link/x.bin"}])


def test_private_addresses_are_refused_unless_allowed(tmp_path):
    strict = Downloads(config.load({"ENCRYPTION_REQUIRED": "0", "COMFYUI_MODEL_DIR": str(tmp_path)}))
    for url in (
        "http://127.0.0.1:9/x",
        "http://169.254.169.254/latest",
        "http://10.1.2.3/x",
        "http://[::1]/x",
        "http://localhost/x",
    ):
        with pytest.raises(errors.UrlNotAllowed):
            strict.submit([{"type": "vae", "url": url}])


@pytest.mark.parametrize(
    ("host", "sent"),
    [
        ("civitai.com", True),
        ("files.civitai.com", True),
        ("CIVITAI.COM", True),
        ("evilcivitai.com", False),
        ("civitai.com.evil.example", False),
        ("example.com", False),
    ],
)
def test_the_civitai_token_goes_to_civitai_and_its_subdomains_only(tmp_path, monkeypatch, host, sent):
    authorizations = []

    def offline_get(url, headers, allow_private, timeout=30.0):
        authorizations.append(headers.get("Authorization"))
        raise errors.DownloadFailed("offline")

    monkeypatch.setattr(url_guard, "resolve", lambda *args: ["203.0.113.9"])
    monkeypatch.setattr(url_guard, "get", offline_get)
    settings = config.load(
        {"ENCRYPTION_REQUIRED": "0", "COMFYUI_MODEL_DIR": str(tmp_path), "CIVITAI_TOKEN": "civ-secret"}
    )
    [download] = finish(Downloads(settings), [{"type": "loras", "url": f"https://{host}/api/download/1"}])
    assert download.state == "failed" and authorizations
    assert all((auth == "Bearer civ-secret") is sent for auth in authorizations)


def test_credentials_in_a_url_appear_in_no_status_log_or_error(downloads, server, caplog):
    port = server.server_address[1]
    items = [
        {
            "type": "loras",
            "url": f"http://user:pa55word@127.0.0.1:{port}/file/model.safetensors",
        },
        {"type": "vae", "url": f"http://user:pa55word@127.0.0.1:{port}/file/missing.bin?sig=qs-secret"},
    ]
    with caplog.at_level("INFO"):  # the level the worker logs at
        done, failed = finish(downloads, items)
    assert (done.state, failed.state) == ("done", "failed")
    shown = str(done.view()) + str(failed.view()) + caplog.text
    assert "pa55word" not in shown and "qs-secret" not in shown and "user:" not in shown
    assert done.view()["source"] == f"http://127.0.0.1:{port}/file/model.safetensors"
