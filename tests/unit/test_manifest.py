"""The real model manifest parses, is complete and honest about licences; bad manifests fail clearly."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import get_args

import pytest

from mirage.errors import ProvisioningError
from mirage.weights.embedded import EMBEDDED_FILES, embedded_model_path
from mirage.weights.manifest import DEFAULT_MANIFEST, Stage, load_manifest

NON_COMMERCIAL = ("scrfd_10g", "arcface_w600k_r50", "inswapper_128", "inswapper_128_fp16")


def test_real_manifest_parses_and_lists_every_model() -> None:
    manifest = load_manifest()
    assert DEFAULT_MANIFEST.is_file()
    assert set(manifest.names) == {
        "blazeface_short",
        "blazeface_full",
        "facemesh",
        "scrfd_10g",
        "arcface_w600k_r50",
        "inswapper_128",
        "inswapper_128_fp16",
        "codeformer",
        "gfpgan_1.4",
        "gpen_bfr_256",
        "gpen_bfr_512",
        "contentvec_768_l12",
    }


def test_every_entry_has_licence_stage_and_a_source() -> None:
    for entry in load_manifest().models:
        assert entry.licence.strip(), entry.name
        assert entry.stage in get_args(Stage), entry.name
        assert entry.enables.startswith("the "), entry.name  # completes "…; <enables> is disabled."
        if entry.is_embedded:
            assert entry.url is None and entry.url_env is None
        else:
            assert entry.url and entry.url.startswith("https://"), entry.name
            assert entry.url_env and entry.url_env.startswith("MIRAGE_") and entry.url_env.endswith("_URL"), entry.name
            assert not Path(entry.file).is_absolute() and ".." not in Path(entry.file).parts


def test_insightface_models_are_marked_non_commercial() -> None:
    manifest = load_manifest()
    for name in NON_COMMERCIAL:
        entry = manifest.get(name)
        assert entry.commercial_use is False, name
        assert "non-commercial research use only" in entry.licence, name
    assert manifest.get("inswapper_128_fp16").file == "inswapper/inswapper_128_fp16.onnx"
    assert manifest.get("scrfd_10g").file.startswith("buffalo_l/")


def test_default_path_needs_nothing_downloaded() -> None:
    manifest = load_manifest()
    assert [e.name for e in manifest.models if e.required] == []
    for entry in manifest.models:
        if not entry.is_embedded:
            assert entry.stage in {"detect", "identity", "swap", "enhance", "voice", "landmarks"}


def test_seed_url_overrides_exist_and_are_honoured() -> None:
    manifest = load_manifest()
    inswapper = manifest.get("inswapper_128_fp16")
    assert inswapper.url_env == "MIRAGE_INSWAPPER_URL"
    assert manifest.get("codeformer").url_env == "MIRAGE_CODEFORMER_URL"
    assert inswapper.resolved_url({"MIRAGE_INSWAPPER_URL": "http://mirror.local/x.onnx"}) == "http://mirror.local/x.onnx"
    assert inswapper.resolved_url({"MIRAGE_INSWAPPER_URL": "  "}) == inswapper.url
    assert inswapper.resolved_url({}) == inswapper.url


def test_embedded_entries_resolve_to_the_wheel_files_they_pin() -> None:
    embedded = [e for e in load_manifest().models if e.is_embedded]
    assert {e.embedded for e in embedded} == set(EMBEDDED_FILES)
    for entry in embedded:
        path = embedded_model_path(entry.embedded)  # type: ignore[arg-type]
        data = path.read_bytes()
        assert len(data) == entry.size, entry.name
        assert hashlib.sha256(data).hexdigest() == entry.sha256, entry.name


GOOD = """
version: 1
models:
  - name: demo
    title: Demo
    stage: swap
    enables: the demo swapper
    file: demo/demo.onnx
    url: https://example.invalid/demo.onnx
    url_env: MIRAGE_DEMO_URL
    sha256: {sha}
    size: 10
    licence: MIT
    commercial_use: true
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    return path


def test_minimal_manifest_loads(tmp_path: Path) -> None:
    manifest = load_manifest(_write(tmp_path, GOOD.format(sha="a" * 64)))
    assert manifest.get("demo").size == 10


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (GOOD.format(sha="not-a-hash"), "sha256"),
        (GOOD.format(sha="a" * 64).replace("    stage: swap\n", "    stage: teleport\n"), "stage"),
        (GOOD.format(sha="a" * 64).replace("    licence: MIT\n", ""), "licence"),
        (GOOD.format(sha="a" * 64).replace("demo/demo.onnx", "../escape.onnx"), "file"),
        (GOOD.format(sha="a" * 64).replace("    url: https://example.invalid/demo.onnx\n", ""), "needs a url"),
        (GOOD.format(sha="a" * 64) + "\n    colour: blue\n", "colour"),
    ],
)
def test_malformed_manifest_names_file_entry_and_field(tmp_path: Path, text: str, field: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ProvisioningError) as info:
        load_manifest(path)
    message = str(info.value)
    assert str(path) in message
    assert field in message
    assert "(demo)" in message  # the entry, by name
    assert "\n" not in message


def test_duplicate_names_and_bad_yaml_are_rejected(tmp_path: Path) -> None:
    body = GOOD.format(sha="a" * 64)
    entry = body.split("models:\n", 1)[1].replace("demo/demo.onnx", "demo/other.onnx").replace("MIRAGE_DEMO_URL", "MIRAGE_DEMO2_URL")
    with pytest.raises(ProvisioningError, match="name 'demo' appears twice"):
        load_manifest(_write(tmp_path, body + entry))
    with pytest.raises(ProvisioningError, match="not valid YAML at line"):
        load_manifest(_write(tmp_path, "models: [\n  - name: x\n  bad"))
    with pytest.raises(ProvisioningError, match="Cannot read the model manifest"):
        load_manifest(tmp_path / "absent.yaml")


def test_embedded_entry_cannot_have_a_url(tmp_path: Path) -> None:
    text = """
models:
  - name: blazeface_short
    title: BlazeFace
    stage: detect
    enables: the embedded detector
    file: face_detection_short_range.tflite
    embedded: blazeface_short
    url: https://example.invalid/x.tflite
    licence: Apache-2.0
    commercial_use: true
"""
    with pytest.raises(ProvisioningError, match="embedded model has no url"):
        load_manifest(_write(tmp_path, text))


def test_unknown_model_name_is_one_clear_sentence() -> None:
    with pytest.raises(ProvisioningError, match=r"Unknown model 'nope'; known models: .*inswapper_128_fp16"):
        load_manifest().get("nope")
