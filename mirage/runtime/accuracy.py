"""Build-time accuracy check of TensorRT engines against fp32 ONNX Runtime, on real aligned faces.

An fp16 engine can compile fine and still be wrong: half precision overflows or
loses too much in some layers (Deep-Live-Cam #1556 reports artifacts with
``inswapper_128_fp16``). ``models compile`` therefore runs every new engine on the
same inputs as ONNX Runtime on the CPU (fp32 arithmetic for an fp32 ONNX file) and
refuses an engine whose outputs hold NaN/Inf values or differ by more than
:class:`AccuracyLimits`, with the measured figures in the message
(:class:`EngineAccuracyError`, a ModelUnavailableError, so the model falls back to
ONNX Runtime CUDA).

The inputs are real faces from installed packages (scikit-image's astronaut,
insightface's packaged photos), found by the embedded BlazeFace + FaceMesh and
aligned exactly as serving aligns them: 128 px ArcFace template for InSwapper,
112 px for ArcFace, the 640 px letterbox for SCRFD (:func:`reference_feeds`). The
comparison itself (:func:`compare_outputs`) is plain numpy and runs anywhere.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from mirage.errors import ModelUnavailableError
from mirage.runtime.onnx import TensorInfo

logger = logging.getLogger(__name__)

Runner = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


class EngineAccuracyError(ModelUnavailableError):
    """A compiled engine's outputs are NaN/Inf or too far from fp32 ONNX Runtime's."""


@dataclass(frozen=True)
class AccuracyLimits:
    """Largest accepted error of an output, relative to the fp32 reference.

    ``mean_rel``: mean |engine - reference| / mean |reference|;
    ``max_rel``: max |engine - reference| / max |reference|.
    fp16 engines of these models stay well under 1 % / 5 %; the defaults leave
    room for that and still refuse visibly broken output.
    """

    mean_rel: float = 0.02
    max_rel: float = 0.25


@dataclass(frozen=True)
class OutputError:
    name: str
    mean_abs: float
    max_abs: float
    mean_rel: float
    max_rel: float
    non_finite: int
    size: int


@dataclass(frozen=True)
class AccuracyReport:
    model: str
    samples: str
    outputs: tuple[OutputError, ...]

    @property
    def worst(self) -> OutputError:
        return max(self.outputs, key=lambda o: (o.non_finite, o.mean_rel))

    def describe(self) -> str:
        w = self.worst
        return (
            f"matches fp32 ONNX Runtime on {self.samples}: worst output {w.name!r} "
            f"mean error {w.mean_rel:.3%} / max {w.max_rel:.3%} of the reference (mean abs {w.mean_abs:.3g})"
        )


def compare_outputs(
    model: str,
    got: Mapping[str, np.ndarray],
    want: Mapping[str, np.ndarray],
    samples: str,
    limits: AccuracyLimits | None = None,
    what: str = "engine",
) -> AccuracyReport:
    """Compare every output of ``want`` (the fp32 reference) with ``got``; raise EngineAccuracyError
    on NaN/Inf, a shape mismatch, or errors beyond ``limits``. Returns the figures otherwise."""
    limits = limits or AccuracyLimits()
    errors: list[OutputError] = []
    for name, reference in want.items():
        if name not in got:
            raise EngineAccuracyError(f"The {what} for {model} is refused: it gives no output {name!r}.")
        ref = np.asarray(reference, dtype=np.float64)
        out = np.asarray(got[name], dtype=np.float64)
        if out.shape != ref.shape:
            raise EngineAccuracyError(
                f"The {what} for {model} is refused: output {name!r} has shape {out.shape}, fp32 ONNX Runtime gives {ref.shape}."
            )
        non_finite = int(out.size - np.count_nonzero(np.isfinite(out)))
        if non_finite:
            raise EngineAccuracyError(
                f"The {what} for {model} is refused: output {name!r} has {non_finite} NaN/Inf values "
                f"of {out.size} on {samples}."
            )
        diff = np.abs(out - ref)
        scale_mean = max(float(np.abs(ref).mean()) if ref.size else 0.0, 1e-12)
        scale_max = max(float(np.abs(ref).max()) if ref.size else 0.0, 1e-12)
        mean_abs = float(diff.mean()) if diff.size else 0.0
        max_abs = float(diff.max()) if diff.size else 0.0
        error = OutputError(name, mean_abs, max_abs, mean_abs / scale_mean, max_abs / scale_max, 0, int(out.size))
        if error.mean_rel > limits.mean_rel or error.max_rel > limits.max_rel:
            raise EngineAccuracyError(
                f"The {what} for {model} is refused: output {name!r} differs from fp32 ONNX Runtime by "
                f"mean {error.mean_rel:.2%} / max {error.max_rel:.2%} of the reference "
                f"(mean abs {mean_abs:.4g}, max abs {max_abs:.4g}; limits {limits.mean_rel:.0%} / {limits.max_rel:.0%}) on {samples}."
            )
        errors.append(error)
    if not errors:
        raise EngineAccuracyError(f"The {what} for {model} could not be checked: the reference gave no outputs.")
    return AccuracyReport(model, samples, tuple(errors))


# --------------------------------------------------------------------------- real faces


def packaged_face_images() -> list[tuple[str, np.ndarray]]:
    """(name, BGR image) of the real photos installed packages ship; empty if none is installed."""
    import cv2

    images: list[tuple[str, np.ndarray]] = []
    try:
        from skimage import data

        images.append(("astronaut", cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)))  # type: ignore[no-untyped-call]
    except Exception:  # noqa: BLE001 - scikit-image missing or its data not installed
        pass
    spec = importlib.util.find_spec("insightface")
    if spec is not None and spec.submodule_search_locations:
        folder = Path(list(spec.submodule_search_locations)[0]) / "data" / "images"
        for file in ("t1.jpg", "Tom_Hanks_54745.png"):
            image = cv2.imread(str(folder / file), cv2.IMREAD_COLOR)
            if image is not None:
                images.append((file, image))
    return images


def aligned_faces(size: int, max_faces: int = 8) -> tuple[list[np.ndarray], list[tuple[str, np.ndarray]]]:
    """Up to ``max_faces`` real faces aligned to the ``size`` px ArcFace template (BGR uint8),
    and the photos they came from. Faces come from the embedded BlazeFace + FaceMesh."""
    from mirage.detect.blazeface import BlazeFaceConfig, BlazeFaceDetector
    from mirage.geometry.align import align_face
    from mirage.landmarks.facemesh import FaceMeshLandmarker, roi_from_detection
    from mirage.landmarks.topology import five_point_from_mesh

    photos = packaged_face_images()
    detector = BlazeFaceDetector(BlazeFaceConfig(model="full"))
    landmarker = FaceMeshLandmarker()
    crops: list[np.ndarray] = []
    for _, image in photos:
        for det in detector.detect([image])[0]:
            marks = landmarker.landmarks([(image, roi_from_detection(det))])[0]
            crops.append(align_face(image, five_point_from_mesh(marks.xy), size).image)
            if len(crops) >= max_faces:
                return crops, photos
    return crops, photos


def _unit_latents(count: int, size: int, seed: int = 0) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    latents = rng.standard_normal((count, size)).astype(np.float32)
    unit: npt.NDArray[np.float32] = latents / np.linalg.norm(latents, axis=1, keepdims=True)
    return unit


def reference_feeds(
    model: str, inputs: Sequence[TensorInfo], max_batch: int = 8, sample_shapes: Mapping[str, Sequence[int]] | None = None
) -> tuple[dict[str, np.ndarray], str]:
    """Inputs for the accuracy check of ``model`` built from real faces, pre-processed as serving does,
    and a description of them (``"6 real aligned faces"``). Raises ModelUnavailableError without faces."""
    names = [info.name for info in inputs]
    if model.startswith("inswapper"):
        target = next((i for i in inputs if i.name == "target"), inputs[0])
        source = next((i for i in inputs if i.name == "source"), inputs[-1])
        crops, _ = aligned_faces(128, max_batch)
        if not crops:
            raise ModelUnavailableError("No real face was found in the packaged photos to check the engine with.")
        batch = np.stack(crops).astype(np.float32)
        feeds = {
            target.name: np.ascontiguousarray((batch[..., ::-1] / 255.0).transpose(0, 3, 1, 2), dtype=target.dtype),
            source.name: _unit_latents(len(crops), 512).astype(source.dtype),
        }
        return feeds, f"{len(crops)} real aligned faces (128 px)"
    if model.startswith("arcface"):
        crops, _ = aligned_faces(112, max_batch)
        if not crops:
            raise ModelUnavailableError("No real face was found in the packaged photos to check the engine with.")
        batch = np.stack(crops).astype(np.float32)
        blob = ((batch[..., ::-1] - 127.5) / 127.5).transpose(0, 3, 1, 2)
        return {names[0]: np.ascontiguousarray(blob, dtype=inputs[0].dtype)}, f"{len(crops)} real aligned faces (112 px)"
    if model.startswith("scrfd"):
        from mirage.detect.scrfd import letterbox

        photos = packaged_face_images()[:max_batch]
        if not photos:
            raise ModelUnavailableError("No packaged photo with faces is installed to check the engine with.")
        size = int((sample_shapes or {}).get(names[0], (3, 640, 640))[-1])
        batch = np.stack([letterbox(image, size).image for _, image in photos]).astype(np.float32)
        blob = ((batch[..., ::-1] - 127.5) / 128.0).transpose(0, 3, 1, 2)
        return {names[0]: np.ascontiguousarray(blob, dtype=inputs[0].dtype)}, f"{len(photos)} real photos of faces ({size} px letterbox)"
    if model in _ENHANCERS:  # face restorers: real aligned faces, RGB scaled to [-1, 1]; CodeFormer's w = 0.75
        image = next((i for i in inputs if i.name != "weight"), inputs[0])
        side = image.shape[-1] if isinstance(image.shape[-1], int) else 512
        crops, _ = aligned_faces(int(side), max_batch)
        if not crops:
            raise ModelUnavailableError("No real face was found in the packaged photos to check the engine with.")
        batch = np.stack(crops).astype(np.float32)
        blob = (batch[..., ::-1] / 127.5 - 1.0).transpose(0, 3, 1, 2)
        feeds = {image.name: np.ascontiguousarray(blob, dtype=image.dtype)}
        weight = next((i for i in inputs if i.name == "weight"), None)
        if weight is not None:
            feeds[weight.name] = np.array([0.75], dtype=weight.dtype)
        return feeds, f"{len(crops)} real aligned faces ({side} px)"
    raise ModelUnavailableError(f"No real-face inputs are defined for {model}; its engine cannot be checked.")


#: The face restorers (mirage/enhance/models.py ENHANCER_NAMES), checked on real aligned faces.
_ENHANCERS = ("gfpgan_1.4", "codeformer", "gpen_bfr_256", "gpen_bfr_512")


def check_against_onnxruntime(
    model: str,
    onnx_path: Path,
    run: Runner,
    inputs: Sequence[TensorInfo],
    *,
    max_batch: int = 8,
    sample_shapes: Mapping[str, Sequence[int]] | None = None,
    limits: AccuracyLimits | None = None,
    what: str = "engine",
) -> AccuracyReport:
    """Run ``run`` (an engine) and ONNX Runtime CPU on the same real-face inputs and compare."""
    import onnxruntime as ort

    feeds, samples = reference_feeds(model, inputs, max_batch, sample_shapes)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    want = dict(zip(names, session.run(names, feeds)))
    got = run(feeds)
    report = compare_outputs(model, got, want, samples, limits, what)
    logger.info("%s for %s %s", what, model, report.describe())
    return report


def engine_check(model: str, onnx_path: Path, max_batch: int, sample_shapes: Mapping[str, Sequence[int]] | None = None,
                 limits: AccuracyLimits | None = None) -> Callable[[Path], str]:
    """The ``check`` hook of :func:`mirage.runtime.tensorrt.compile_model`: open the candidate engine,
    compare it with fp32 ONNX Runtime on real faces, return the figures or raise EngineAccuracyError."""

    def check(candidate: Path) -> str:
        from mirage.runtime.tensorrt import read_engine_header
        from mirage.runtime.tensorrt_model import TensorRTModel

        header = read_engine_header(candidate)
        engine = TensorRTModel(candidate, onnx_path, model, header.key)
        try:
            def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
                return dict(zip(engine.output_names, engine.run(feeds)))

            what = f"{header.key.precision} TensorRT engine"
            report = check_against_onnxruntime(
                model, onnx_path, run, engine.inputs, max_batch=max_batch, sample_shapes=sample_shapes, limits=limits, what=what
            )
        finally:
            engine.close()
        return report.describe()

    return check
