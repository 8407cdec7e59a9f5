"""Swap quality, judged by a model the pipeline never uses (dlib's face-recognition ResNet).

    .venv/bin/python benchmarks/bench_quality.py [--json test-artifacts/quality/quality.json]
        [--out-dir test-artifacts/quality] [--flicker-frames 60] [--coverage 1.0] [--mouth-mask]

Drives the product only through its public pipeline API (``FacePipeline.build_identity`` /
``process``), on every real face the installed packages carry: scikit-image's astronaut,
the six faces of insightface's ``t1.jpg`` (cropped ~2.5× their face box at native
resolution, numbered by dlib's box order left → right), and Tom Hanks (112 px) as a
greyscale reference. Each case is also run through a naive baseline (5-point similarity
warp of the reference face, feathered ellipse, no colour matching) so the table shows the
product against a paste. Metric definitions: ``benchmarks/quality_metrics.py`` and
``benchmarks/README.md``. Side-by-side PNGs (reference | target | output | baseline) go to
the output folder; the JSON holds every figure per case and the summary against the goals.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import quality_metrics as qm  # noqa: E402
from mirage.client.sources import astronaut_source  # noqa: E402
from mirage.pipeline import FacePipeline, PipelineConfig  # noqa: E402
from mirage.types import SwapOptions  # noqa: E402

Image = qm.Image

#: Goals of issue 9: (metric key, direction, threshold, aggregate the goal applies to).
GOALS: dict[str, tuple[str, float, str]] = {
    "identity": (">=", 0.70, "mean"),
    "sharpness": (">=", 0.6, "worst"),
    "delta_e_rel": ("<=", 4.0, "worst"),
    "grey_chroma": ("<=", 0.5, "worst"),  # ours: the issue asks for "no tint" (1.1 is a visible cast)
    "edge_step": ("<=", 1.3, "worst"),
    "mouth_mad": ("<=", 8.0, "worst"),
    "flicker": ("<=", 1.15, "worst"),
}


# ---------------------------------------------------------------- faces


@dataclass(frozen=True)
class Face:
    name: str
    image: Image
    note: str = ""


def _crop_around(image: Image, box: qm.Box, factor: float) -> Image:
    b = box.scaled(factor).clipped(image.shape)
    return np.ascontiguousarray(image[b.top : b.bottom, b.left : b.right])


def load_faces(judge: qm.Judge) -> dict[str, Face]:
    faces = {"astronaut": Face("astronaut", qm.astronaut(), "smiling, teeth")}
    group = qm.t1()
    found = judge.faces(group)
    if len(found) != 6:
        raise RuntimeError(f"dlib found {len(found)} faces in t1.jpg, expected 6.")
    notes = {
        0: "woman far left, closed mouth",
        1: "woman second from left, turned",
        2: "man, smiling",
        3: "laughing man, open mouth",
        4: "man top right, turned",
        5: "woman far right",
    }
    for index, face in enumerate(found):
        faces[f"t1_{index}"] = Face(f"t1_{index}", _crop_around(group, face.box, 2.5), notes[index])
    faces["t1_2_grey"] = Face("t1_2_grey", qm.to_grey_bgr(faces["t1_2"].image), "greyscale")
    faces["hanks_grey"] = Face("hanks_grey", qm.to_grey_bgr(qm.tom_hanks()), "112 px, greyscale")
    faces["astronaut_cam"] = Face("astronaut_cam", astronaut_source(640, 480, 30.0).frame(0), "640x480 camera frame, large face")
    return faces


def central_face(judge: qm.Judge, image: Image) -> qm.JudgedFace | None:
    """The face nearest the image centre (a crop of t1 can hold a neighbour's face)."""
    found = judge.faces(image)
    if not found:
        return None
    cy, cx = image.shape[0] / 2.0, image.shape[1] / 2.0

    def distance(face: qm.JudgedFace) -> float:
        b = face.box
        return math.hypot((b.left + b.right) / 2.0 - cx, (b.top + b.bottom) / 2.0 - cy) - 0.25 * b.size

    return min(found, key=distance)


#: (reference, target, what the case checks)
CASES: list[tuple[str, str, str]] = [
    ("astronaut", "t1_0", "smiling reference on a closed-mouth target"),
    ("astronaut", "t1_1", "turned face"),
    ("astronaut", "t1_2", ""),
    ("astronaut", "t1_3", "open-mouth target"),
    ("astronaut", "t1_4", "turned face"),
    ("astronaut", "t1_5", ""),
    ("t1_2", "astronaut", ""),
    ("t1_5", "t1_3", "open-mouth target"),
    ("hanks_grey", "astronaut", "112 px greyscale reference"),
    ("astronaut", "t1_2_grey", "greyscale target"),
    ("t1_0", "astronaut_cam", "large face in a 640x480 camera frame"),
    ("t1_4", "astronaut_cam", "turned reference, large face"),
]

OPEN_MOUTH = 0.12  # inner-lip gap ÷ mouth width above which a target counts as open-mouthed


# ---------------------------------------------------------------- one case


@dataclass
class Measured:
    identity: float
    d_ref: float
    d_tgt: float
    sharpness: float
    lap_var: float
    delta_e_rel: float
    delta_e_out: float
    delta_e_target: float
    d_lightness: float
    d_a: float
    d_b: float
    edge_step: float
    edge_step_target: float
    grey_chroma: float | None
    mouth_mad: float | None


@dataclass
class CaseResult:
    name: str
    reference: str
    target: str
    checks: str
    target_size: tuple[int, int]
    face_px: int
    faces_swapped: int
    mouth_open: float
    product: Measured
    baseline: Measured
    ms_product: float
    notes: list[str] = field(default_factory=list)


def measure(
    judge: qm.Judge,
    output: Image,
    target: Image,
    tgt_face: qm.JudgedFace,
    ref_descriptor: np.ndarray,
    tgt_descriptor: np.ndarray,
    grey_target: bool,
    open_mouth: bool,
) -> Measured:
    out_face = judge.face(output)
    if out_face is None or _overlap(out_face.box, tgt_face.box) < 0.5:
        out_face = judge.landmarks_in(output, tgt_face.box)
    descriptor = judge.descriptor(output, out_face)
    d_ref = qm.descriptor_distance(descriptor, ref_descriptor)
    d_tgt = qm.descriptor_distance(descriptor, tgt_descriptor)
    colour = qm.colour_report(output, target, tgt_face.landmarks)
    edges = qm.edge_report(output, target, tgt_face.box)
    grey = qm.max_mean_chroma(output, qm.face_hull_mask(target.shape, tgt_face.landmarks)) if grey_target else None
    mouth = qm.mouth_interior_mad(output, target, tgt_face.landmarks) if open_mouth else None
    return Measured(
        identity=qm.identity_ratio(d_ref, d_tgt),
        d_ref=d_ref,
        d_tgt=d_tgt,
        sharpness=qm.sharpness_ratio(output, target, tgt_face.box),
        lap_var=qm.laplacian_variance(output, tgt_face.box.scaled(0.7)),
        delta_e_rel=colour.delta_e_rel,
        delta_e_out=colour.delta_e_out,
        delta_e_target=colour.delta_e_target,
        d_lightness=colour.d_lightness,
        d_a=colour.d_a,
        d_b=colour.d_b,
        edge_step=edges.step_out,
        edge_step_target=edges.step_target,
        grey_chroma=grey,
        mouth_mad=mouth,
    )


def _overlap(a: qm.Box, b: qm.Box) -> float:
    w = max(0, min(a.right, b.right) - max(a.left, b.left))
    h = max(0, min(a.bottom, b.bottom) - max(a.top, b.top))
    union = a.width * a.height + b.width * b.height - w * h
    return w * h / union if union > 0 else 0.0


# ---------------------------------------------------------------- pictures


PANEL_H = 320


def _panel(image: Image, box: qm.Box, label: str, lines: list[str]) -> Image:
    crop = _crop_around(image, box, 2.0)
    scale = PANEL_H / crop.shape[0]
    panel = cv2.resize(
        crop, (max(1, int(round(crop.shape[1] * scale))), PANEL_H), interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA
    )
    panel = cv2.copyMakeBorder(panel, 28, 18 * len(lines) + 6, 4, 4, cv2.BORDER_CONSTANT, value=(255, 255, 255))
    cv2.putText(panel, label, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    for i, line in enumerate(lines):
        cv2.putText(panel, line, (6, 28 + PANEL_H + 16 + 18 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return panel


def _metric_lines(m: Measured) -> list[str]:
    lines = [f"id {m.identity:.2f}  sharp {m.sharpness:.2f}", f"dE {m.delta_e_rel:.1f}  edge {m.edge_step:.2f}"]
    extra = []
    if m.grey_chroma is not None:
        extra.append(f"chroma {m.grey_chroma:.1f}")
    if m.mouth_mad is not None:
        extra.append(f"mouth {m.mouth_mad:.1f}")
    lines.append("  ".join(extra))
    return lines


def side_by_side(
    reference: Image, ref_box: qm.Box, target: Image, tgt_box: qm.Box, output: Image, baseline: Image, result: CaseResult
) -> Image:
    panels = [
        _panel(reference, ref_box, f"reference: {result.reference}", ["", "", ""]),
        _panel(
            target,
            tgt_box,
            f"target: {result.target}",
            [f"{target.shape[1]}x{target.shape[0]}, face {result.face_px} px", result.checks[:40], ""],
        ),
        _panel(output, tgt_box, "output (mirage)", _metric_lines(result.product)),
        _panel(baseline, tgt_box, "baseline (naive paste)", _metric_lines(result.baseline)),
    ]
    height = max(p.shape[0] for p in panels)
    panels = [cv2.copyMakeBorder(p, 0, height - p.shape[0], 0, 0, cv2.BORDER_CONSTANT, value=(255, 255, 255)) for p in panels]
    return np.concatenate(panels, axis=1)


# ---------------------------------------------------------------- flicker


def flicker_case(judge: qm.Judge, reference: Image, ref_face: qm.JudgedFace, frames: int, options: SwapOptions) -> dict[str, Any]:
    source = astronaut_source(640, 480, 30.0)
    inputs = [source.frame(i) for i in range(frames)]
    pipeline = FacePipeline(PipelineConfig(max_faces=1, swap_options=options, track=True))
    identity = pipeline.build_identity(reference).identity
    outputs = [pipeline.process(frame, identity, t=i / 30.0).frame for i, frame in enumerate(inputs)]
    judged = [judge.face(frame) for frame in inputs]
    boxes = [j.box if j is not None else None for j in judged]
    baselines = [
        qm.naive_paste(reference, ref_face.landmarks, frame, j.landmarks) if j is not None else frame.copy()
        for frame, j in zip(inputs, judged)
    ]
    out_res, in_res = qm.flicker_residuals(inputs, outputs, boxes)
    base_res, _ = qm.flicker_residuals(inputs, baselines, boxes)
    return {
        "frames": frames,
        "frames_judged": sum(b is not None for b in boxes),
        "residual_input": in_res,
        "residual_product": out_res,
        "residual_baseline": base_res,
        "product": out_res / in_res,
        "baseline": base_res / in_res,
    }


# ---------------------------------------------------------------- summary and table


def _finite(values: list[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def summarise(cases: list[CaseResult], flicker: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for key, (direction, goal, aggregate) in GOALS.items():
        row: dict[str, Any] = {"goal": f"{direction} {goal}", "applies_to": aggregate}
        for who in ("product", "baseline"):
            if key == "flicker":
                values = _finite([flicker[who]])
            else:
                values = _finite([getattr(getattr(c, who), key) for c in cases])
            if not values:
                row[who] = None
                continue
            worst = min(values) if direction == ">=" else max(values)
            mean = float(np.mean(values))
            judged = mean if aggregate == "mean" else worst
            passed = judged >= goal if direction == ">=" else judged <= goal
            row[who] = {"mean": round(mean, 3), "worst": round(worst, 3), "n": len(values), "pass": bool(passed)}
        summary[key] = row
    return summary


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}f}"


def print_table(cases: list[CaseResult], flicker: dict[str, Any], summary: dict[str, Any]) -> None:
    header = (
        f"{'case':<24} {'face':>4} {'sw':>2} {'ident P/B':>11} {'sharp P/B':>11} {'dE_rel P/B':>11} "
        f"{'dE out/tgt':>11} {'dL/da':>11} {'edge P/B/tgt':>16} {'chroma P/B':>11} {'mouth P/B':>11} {'ms':>5}"
    )
    print(header)
    print("-" * len(header))
    for c in cases:
        p, b = c.product, c.baseline
        print(
            f"{c.name:<24} {c.face_px:>4} {c.faces_swapped:>2} "
            f"{_fmt(p.identity):>5}/{_fmt(b.identity):<5} {_fmt(p.sharpness):>5}/{_fmt(b.sharpness):<5} "
            f"{_fmt(p.delta_e_rel, 1):>5}/{_fmt(b.delta_e_rel, 1):<5} "
            f"{_fmt(p.delta_e_out, 1):>5}/{_fmt(p.delta_e_target, 1):<5} "
            f"{_fmt(p.d_lightness, 1):>5}/{_fmt(p.d_a, 1):<5} "
            f"{_fmt(p.edge_step):>5}/{_fmt(b.edge_step):>5}/{_fmt(p.edge_step_target):<4} "
            f"{_fmt(p.grey_chroma, 1):>5}/{_fmt(b.grey_chroma, 1):<5} "
            f"{_fmt(p.mouth_mad, 1):>5}/{_fmt(b.mouth_mad, 1):<5} {c.ms_product:>5.0f}"
        )
    print(
        f"\nflicker (astronaut clip, {flicker['frames']} frames, {flicker['frames_judged']} judged): "
        f"product {flicker['product']:.2f}x, baseline {flicker['baseline']:.2f}x the input's residual "
        f"({flicker['residual_input']:.2f} grey levels)"
    )
    print(f"\n{'metric':<12} {'goal':>8} {'on':>6} {'product mean/worst':>20} {'':>5} {'baseline mean/worst':>20} {'':>5}")
    for key, row in summary.items():
        cells = []
        for who in ("product", "baseline"):
            r = row[who]
            if r is None:
                cells.append(f"{'-':>20} {'':>5}")
            else:
                cells.append(f"{_fmt(r['mean']):>9} / {_fmt(r['worst']):<8} {'PASS' if r['pass'] else 'FAIL':>5}")
        print(f"{key:<12} {row['goal']:>8} {row['applies_to']:>6} {cells[0]} {cells[1]}")


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path("test-artifacts/quality/quality.json"))
    parser.add_argument("--out-dir", type=Path, default=Path("test-artifacts/quality"))
    parser.add_argument("--flicker-frames", type=int, default=60)
    parser.add_argument("--coverage", type=float, default=1.0)
    parser.add_argument("--mouth-mask", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    options = SwapOptions(mouth_mask=args.mouth_mask, coverage=args.coverage)

    judge = qm.Judge()
    faces = load_faces(judge)
    judged: dict[str, qm.JudgedFace] = {}
    for name, face in faces.items():
        found = central_face(judge, face.image)
        if found is None:
            raise RuntimeError(f"dlib found no face in {name}.")
        judged[name] = found
    descriptors = {name: judge.descriptor(faces[name].image, judged[name]) for name in faces}

    pipeline = FacePipeline(PipelineConfig(max_faces=1, swap_options=options, track=False))
    identities: dict[str, Any] = {}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    cases: list[CaseResult] = []
    for ref_name, tgt_name, checks in CASES:
        reference, target = faces[ref_name].image, faces[tgt_name].image
        ref_face, tgt_face = judged[ref_name], judged[tgt_name]
        if ref_name not in identities:
            identities[ref_name] = pipeline.build_identity(reference).identity
        pipeline.reset()
        t0 = time.perf_counter()
        result = pipeline.process(target, identities[ref_name])
        ms = (time.perf_counter() - t0) * 1000.0
        output = result.frame
        if output.shape != target.shape:
            raise RuntimeError(f"{ref_name}->{tgt_name}: output shape {output.shape} != target {target.shape}.")
        baseline = qm.naive_paste(reference, ref_face.landmarks, target, tgt_face.landmarks)
        grey_target = tgt_name.endswith("_grey")
        opening = qm.mouth_opening(tgt_face.landmarks)
        open_mouth = opening >= OPEN_MOUTH
        common = (descriptors[ref_name], descriptors[tgt_name], grey_target, open_mouth)
        case = CaseResult(
            name=f"{ref_name}->{tgt_name}",
            reference=ref_name,
            target=tgt_name,
            checks=checks,
            target_size=(target.shape[1], target.shape[0]),
            face_px=int(tgt_face.box.size),
            faces_swapped=len(result.faces),
            mouth_open=round(opening, 3),
            product=measure(judge, output, target, tgt_face, *common),
            baseline=measure(judge, baseline, target, tgt_face, *common),
            ms_product=ms,
        )
        if not result.faces:
            case.notes.append("the product found no face: output == target")
        cases.append(case)
        picture = side_by_side(reference, ref_face.box, target, tgt_face.box, output, baseline, case)
        cv2.imwrite(str(args.out_dir / f"{case.name.replace('->', '_to_')}.png"), picture)

    flicker_ref = "t1_2"
    flicker = flicker_case(judge, faces[flicker_ref].image, judged[flicker_ref], args.flicker_frames, options)
    flicker["reference"] = flicker_ref
    summary = summarise(cases, flicker)

    print(
        f"swap quality (judge: dlib {judge.version} ResNet descriptors + 68 landmarks), "
        f"mesh swapper, coverage {options.coverage}, mouth_mask {options.mouth_mask}, "
        f"{platform.machine()}; P = product, B = naive baseline\n"
    )
    print_table(cases, flicker, summary)
    elapsed = time.perf_counter() - started
    print(f"\n{len(cases)} cases + flicker in {elapsed:.1f} s; pictures in {args.out_dir}/")

    report = {
        "swapper": "mesh",
        "options": asdict(options),
        "judge": "dlib frontal HOG detector + shape_predictor_68 + dlib_face_recognition_resnet_model_v1",
        "colour_metric": "CIE76 on mean CIELAB (OpenCV float, D65)",
        "cases": [_round(asdict(c)) for c in cases],
        "flicker": _round(flicker),
        "summary": summary,
        "elapsed_s": round(elapsed, 1),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, allow_nan=False))
    return 0


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_round(v) for v in value]
    return value


if __name__ == "__main__":
    raise SystemExit(main())
