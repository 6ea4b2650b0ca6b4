import os

from services.models import model_store


def test_listing_covers_every_type_folder_and_hides_partials(tmp_path):
    (tmp_path / "checkpoints" / "sdxl").mkdir(parents=True)
    (tmp_path / "checkpoints" / "sdxl" / "a.safetensors").write_bytes(b"12345")
    (tmp_path / "checkpoints" / ".b.safetensors.part").write_bytes(b"partial")
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "t5.safetensors").write_bytes(b"1")
    listing = model_store.listing(str(tmp_path))
    assert set(listing) == set(model_store.TYPES) and {"clip", "unet", "text_encoders"} <= set(listing)
    [entry] = listing["checkpoints"]
    assert entry["name"] == "sdxl/a.safetensors" and entry["size"] == 5
    assert entry["mtime"] == int(os.stat(tmp_path / "checkpoints" / "sdxl" / "a.safetensors").st_mtime)
    assert [e["name"] for e in model_store.listing(str(tmp_path), "clip")["clip"]] == ["t5.safetensors"]
    assert list(model_store.listing(str(tmp_path), "clip")) == ["clip"]
