"""The InSwapper a replica serves is one already provisioned (never a download), and serving and
``models compile`` agree on the served file of every model.

A real HTTP server on 127.0.0.1 stands behind every URL of the test manifest, with
downloads allowed (the default a replica used to run with): it counts each request,
so "nothing was downloaded" is measured, not assumed.
"""

from __future__ import annotations

import http.server
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from mirage.cli_compile import compile_source
from mirage.errors import ModelUnavailableError
from mirage.runtime.cuda import GpuInfo
from mirage.runtime.onnx import CPU, CUDA, OrtConfig
from mirage.runtime.select import Accelerators, RuntimeConfig, select_runtime
from mirage.runtime.served import prepared_served_onnx, rewrite_path, served_onnx
from mirage.runtime.tensorrt import (
    engine_filename,
    file_sha256,
    make_engine_key,
    write_engine_file,
)
from mirage.swap.neural import choose_inswapper, load_neural_swap
from mirage.weights.manifest import load_manifest
from mirage.weights.provision import ModelStore, ProvisionConfig
from standins.models import (
    build_arcface_standin,
    build_inswapper_standin,
    build_scrfd_standin,
)

A10G = GpuInfo("NVIDIA A10G", "8.6")
GPU = Accelerators(A10G, "", "10.16.1.11", "", (CUDA, CPU), "13.0")
CPU_ONLY = Accelerators(None, "no NVIDIA driver (libcuda.so.1 is not installed or not mounted)", None, "not installed", (CPU,))
FILES = {
    "inswapper_128": ("swap", "inswapper/inswapper_128_standin.onnx"),
    "inswapper_128_fp16": ("swap", "inswapper/inswapper_128_fp16_standin.onnx"),
    "scrfd_10g": ("detect", "buffalo_l/det_10g_standin.onnx"),
    "arcface_w600k_r50": ("identity", "buffalo_l/w600k_r50_standin.onnx"),
}


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, Counter[str]]]:
    hits: Counter[str] = Counter()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            hits[self.path] += 1
            body = b"\x00" * 4096
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", hits
    httpd.shutdown()
    httpd.server_close()


def _store(tmp_path: Path, base: str, present: dict[str, str]) -> ModelStore:
    """A store whose manifest points every model at the local server; ``present`` maps name → how to build it."""
    entries = [
        {
            "name": name, "title": name, "stage": stage, "enables": f"the {name} stage", "file": file,
            "url": f"{base}/{name}.onnx", "licence": "non-commercial research use only", "commercial_use": False,
        }
        for name, (stage, file) in FILES.items()
    ]
    tmp_path.mkdir(parents=True, exist_ok=True)
    manifest = tmp_path / "models.yaml"
    manifest.write_text(yaml.safe_dump({"version": 1, "models": entries}))
    root = tmp_path / "models"
    for name, how in present.items():
        target = root / FILES[name][1]
        if name.startswith("inswapper"):
            build_inswapper_standin(target, dynamic=how == "dynamic", fp16=name.endswith("fp16"))
        elif name == "scrfd_10g":
            build_scrfd_standin(target)
        else:
            build_arcface_standin(target)
    config = ProvisionConfig(
        models_dir=root, persist=False, persist_dir=tmp_path / "no-volume", fresh=False, offline=False, allow_download=True, timeout_s=5.0
    )
    return ModelStore(config, load_manifest(manifest))


def test_only_fp16_provisioned_serves_fp16_and_downloads_nothing(server: tuple[str, Counter[str]], tmp_path: Path) -> None:
    base, hits = server
    before = sum(hits.values())
    store = _store(tmp_path, base, {"inswapper_128_fp16": "batch1", "scrfd_10g": "batch1", "arcface_w600k_r50": ""})
    for acc in (CPU_ONLY, GPU):  # a CPU would prefer fp32, a GPU fp16: neither may fetch
        neural = load_neural_swap(store, OrtConfig(), RuntimeConfig(warm_cuda=False), accelerators=acc)
        assert set(neural.runtimes) == {"inswapper_128_fp16", "scrfd_10g", "arcface_w600k_r50"}
        assert neural.swapper.model.name == "inswapper_128_fp16"
    assert sum(hits.values()) == before, dict(hits)
    assert not (store.root / FILES["inswapper_128"][1]).exists()


def test_nothing_provisioned_is_one_sentence_and_no_request(server: tuple[str, Counter[str]], tmp_path: Path) -> None:
    base, hits = server
    before = sum(hits.values())
    store = _store(tmp_path, base, {"scrfd_10g": "batch1", "arcface_w600k_r50": ""})
    with pytest.raises(ModelUnavailableError, match=r"InSwapper is not provisioned .*models fetch inswapper_128_fp16"):
        load_neural_swap(store, OrtConfig(), RuntimeConfig(), accelerators=CPU_ONLY)
    store = _store(tmp_path / "b", base, {"inswapper_128_fp16": "batch1", "arcface_w600k_r50": ""})
    with pytest.raises(ModelUnavailableError, match=r"scrfd_10g is not provisioned .*models fetch scrfd_10g"):
        load_neural_swap(store, OrtConfig(), RuntimeConfig(), accelerators=CPU_ONLY)
    assert sum(hits.values()) == before


def test_preference_engine_first_then_hardware(server: tuple[str, Counter[str]], tmp_path: Path) -> None:
    base, hits = server
    before = sum(hits.values())
    store = _store(tmp_path, base, {"inswapper_128": "batch1", "inswapper_128_fp16": "batch1"})
    config = RuntimeConfig()
    assert choose_inswapper(store, config, CPU_ONLY).name == "inswapper_128"  # fp32 runs faster on a CPU
    assert choose_inswapper(store, config, GPU).name == "inswapper_128_fp16"  # fp16 suits the GPU
    # An engine compiled for the fp32 file only: the replica serves that one, on TensorRT.
    fp32 = store.path("inswapper_128")
    source = compile_source("inswapper_128", fp32)
    key = make_engine_key(source, "inswapper_128", A10G, GPU.tensorrt_version or "", config.precision, config.profile, cuda_version="13.0")
    engines = store.root / "engines"
    write_engine_file(engines / engine_filename("inswapper_128", key), "inswapper_128", key, b"engine" * 64)
    picked = choose_inswapper(store, config, GPU)
    assert picked.name == "inswapper_128" and "TensorRT engine" in picked.reason
    assert choose_inswapper(store, RuntimeConfig(cuda_only=True), GPU).name == "inswapper_128_fp16"
    assert sum(hits.values()) == before


def test_one_served_file_for_serving_and_compile(server: tuple[str, Counter[str]], tmp_path: Path) -> None:
    base, _ = server
    # fp16 shipped as batch-1: both serve and compile its proven rewrite; the already-dynamic ArcFace as is.
    store = _store(tmp_path, base, {"inswapper_128_fp16": "batch1", "scrfd_10g": "batch1", "arcface_w600k_r50": ""})
    fp16 = store.path("inswapper_128_fp16")
    assert prepared_served_onnx("inswapper_128_fp16", fp16) is None  # nothing made yet
    neural = load_neural_swap(store, OrtConfig(), RuntimeConfig(), accelerators=CPU_ONLY)
    for name in ("inswapper_128_fp16", "scrfd_10g", "arcface_w600k_r50"):
        served = neural.runtimes[name].onnx_path
        assert served == compile_source(name, store.path(name)) == served_onnx(name, store.path(name))
        assert file_sha256(served) == file_sha256(compile_source(name, store.path(name)))
    assert neural.runtimes["inswapper_128_fp16"].onnx_path == rewrite_path(fp16)
    assert neural.runtimes["arcface_w600k_r50"].onnx_path == store.path("arcface_w600k_r50")
    assert not rewrite_path(store.path("arcface_w600k_r50")).exists()


def test_an_already_dynamic_file_is_served_and_compiled_as_it_is(server: tuple[str, Counter[str]], tmp_path: Path) -> None:
    """The defect: compile keyed the original, serving always made a .batch-dynamic copy: engine never found."""
    base, _ = server
    store = _store(tmp_path, base, {"inswapper_128_fp16": "dynamic"})
    path = store.path("inswapper_128_fp16")
    assert compile_source("inswapper_128_fp16", path) == path == served_onnx("inswapper_128_fp16", path)
    config = RuntimeConfig()
    key = make_engine_key(path, "inswapper_128_fp16", A10G, GPU.tensorrt_version or "", config.precision, config.profile, cuda_version="13.0")
    engines = store.root / "engines"
    write_engine_file(engines / engine_filename("inswapper_128_fp16", key), "inswapper_128_fp16", key, b"engine" * 64)
    served = served_onnx("inswapper_128_fp16", path)
    choice = select_runtime("inswapper_128_fp16", served, engines, config, GPU)
    assert choice.kind == "tensorrt", choice.reason
    assert not rewrite_path(path).exists()
