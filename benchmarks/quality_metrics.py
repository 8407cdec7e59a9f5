"""The swap-quality judge: dlib's face models and the image metrics of ``bench_quality.py``.

Nothing here uses Mirage's own models. Faces are found and described by dlib
(HOG frontal detector, the 68-point shape predictor and the 128-D ResNet
descriptor from ``face_recognition_models``); the metrics are plain NumPy and
OpenCV, so each one can be checked on synthetic images (tests/unit/test_bench_quality.py).

Definitions (a face box is dlib's rectangle on the *target*; the output is the
product's frame and has the target's shape):

- identity-transfer ratio = d_tgt / (d_ref + d_tgt), d = Euclidean distance of
  the dlib descriptor of the output's face to the reference's / the target's.
  1.0: the output is the reference person; 0.5: halfway; 0: still the target.
- sharpness ratio = variance of the Laplacian of the grey image inside the face
  box shrunk to its inner 70 %, output ÷ target.
- colour: CIELAB (OpenCV float conversion, D65), ΔE76 on mean colours. ``centre``
  = cheeks and nose (dlib landmarks, eyes and mouth cut out); ``ring`` = skin
  around the face the swap did not change (|out − target| == 0), a band around the
  jaw line and forehead, kept to skin-coloured pixels of the target within ΔE 15 of
  the target's own cheeks (so hair and background drop out). Since the ring
  is unchanged it is the same in both images, and
  ``ΔE_out`` = ΔE(centre_out, ring), ``ΔE_target`` = ΔE(centre_target, ring) and the
  goal figure ``ΔE_rel`` = ‖(centre_out − ring) − (centre_target − ring)‖
  = ΔE(centre_out, centre_target): how far the face's relation to its surroundings
  moved from the target's own. A face paler (ΔL > 0) or pinker (Δa > 0) than the
  target's face, relative to the same surroundings, scores high.
- chroma (greyscale targets) = max(mean |a|, mean |b|) over the face hull.
- edge step: the changed region is |out − target| summed over channels > 2,
  cleaned (open 3×3, close 5×5, largest component on the face, holes filled);
  band 1 = ring of width w just inside its contour, band 2 = the next ring of
  width w further in (w = 4 % of the face box, at least 2 px); ratio = mean Sobel
  gradient magnitude (grey) in band 1 ÷ band 2. The same bands measured on the
  target give the scene's own ratio (≈ 1).
- open mouth = mean |out − target| (grey levels) inside the target's inner-lip
  polygon (dlib points 60–67).
- flicker ratio = mean |out_t − warp(out_{t−1})| ÷ mean |in_t − warp(in_{t−1})|
  inside the face box, the warp being Farnebäck flow estimated on the input frames.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]
Mask = npt.NDArray[np.bool_]
Points = npt.NDArray[np.float64]

# ---------------------------------------------------------------- packaged images


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the {name} package is not installed.")
    return Path(list(spec.submodule_search_locations)[0])


def _read(path: Path) -> Image:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"cannot read {path}.")
    return np.ascontiguousarray(image)


def astronaut() -> Image:
    """scikit-image's astronaut, BGR, 512×512."""
    from skimage import data

    return np.ascontiguousarray(cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))


def t1() -> Image:
    """insightface's t1.jpg (six faces), BGR, 1280×886."""
    return _read(_package_dir("insightface") / "data" / "images" / "t1.jpg")


def tom_hanks() -> Image:
    """insightface's Tom_Hanks_54745.png, BGR, 112×112."""
    return _read(_package_dir("insightface") / "data" / "images" / "Tom_Hanks_54745.png")


def to_grey_bgr(image: Image) -> Image:
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return np.ascontiguousarray(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))


# ---------------------------------------------------------------- boxes


@dataclass(frozen=True)
class Box:
    left: int
    top: int
    right: int
    bottom: int

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def size(self) -> float:
        return float(max(self.width, self.height))

    def scaled(self, factor: float) -> Box:
        """The box scaled about its centre (unclipped)."""
        cx, cy = (self.left + self.right) / 2.0, (self.top + self.bottom) / 2.0
        hw, hh = self.width * factor / 2.0, self.height * factor / 2.0
        return Box(int(round(cx - hw)), int(round(cy - hh)), int(round(cx + hw)), int(round(cy + hh)))

    def clipped(self, shape: tuple[int, ...]) -> Box:
        h, w = shape[:2]
        return Box(max(0, self.left), max(0, self.top), min(w, self.right), min(h, self.bottom))

    def mask(self, shape: tuple[int, ...]) -> Mask:
        out = np.zeros(shape[:2], dtype=bool)
        b = self.clipped(shape)
        out[b.top : b.bottom, b.left : b.right] = True
        return out


# ---------------------------------------------------------------- the dlib judge


@dataclass(frozen=True)
class JudgedFace:
    box: Box
    landmarks: Points  # (68, 2) x, y
    shape: Any  # dlib.full_object_detection, for descriptors


class Judge:
    """dlib's detector, 68-point predictor and face-recognition ResNet (never the product's models)."""

    def __init__(self) -> None:
        import dlib
        import face_recognition_models as frm

        self._dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(frm.pose_predictor_model_location())
        self.recogniser = dlib.face_recognition_model_v1(frm.face_recognition_model_location())

    @property
    def version(self) -> str:
        return str(self._dlib.__version__)

    def faces(self, image: Image, min_face: int = 80, max_upsample: int = 2) -> list[JudgedFace]:
        """All faces, left → right; the detector is upsampled until faces of ``min_face`` px are found."""
        rgb = np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        upsample = 0
        while upsample < max_upsample and min(image.shape[:2]) * (2**upsample) < 4 * min_face:
            upsample += 1
        rects = list(self.detector(rgb, upsample))
        while not rects and upsample < max_upsample:
            upsample += 1
            rects = list(self.detector(rgb, upsample))
        rects.sort(key=lambda r: r.left())
        return [self.landmarks_in(image, Box(r.left(), r.top(), r.right(), r.bottom()), rgb) for r in rects]

    def face(self, image: Image) -> JudgedFace | None:
        """The largest face, or None."""
        found = self.faces(image)
        return max(found, key=lambda f: f.box.width * f.box.height) if found else None

    def landmarks_in(self, image: Image, box: Box, rgb: Image | None = None) -> JudgedFace:
        """The 68 points of the face inside ``box`` (used on outputs with the target's box)."""
        if rgb is None:
            rgb = np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        rect = self._dlib.rectangle(box.left, box.top, box.right, box.bottom)
        shape = self.predictor(rgb, rect)
        points = np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], dtype=np.float64)
        return JudgedFace(box=box, landmarks=points, shape=shape)

    def descriptor(self, image: Image, face: JudgedFace) -> npt.NDArray[np.float64]:
        rgb = np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        return np.asarray(self.recogniser.compute_face_descriptor(rgb, face.shape), dtype=np.float64)


# ---------------------------------------------------------------- identity


def identity_ratio(d_ref: float, d_tgt: float) -> float:
    """d_tgt / (d_ref + d_tgt): 1 = the reference person, 0 = still the target."""
    total = d_ref + d_tgt
    return float(d_tgt / total) if total > 0 else 0.5


def descriptor_distance(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)))


# ---------------------------------------------------------------- sharpness


def _grey(image: Image) -> npt.NDArray[np.float32]:
    if image.ndim == 2:
        return image.astype(np.float32)
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)


def laplacian_variance(image: Image, box: Box) -> float:
    b = box.clipped(image.shape)
    grey = _grey(image)
    lap = cv2.Laplacian(grey, cv2.CV_32F, ksize=1)
    return float(np.var(lap[b.top : b.bottom, b.left : b.right]))


def sharpness_ratio(output: Image, target: Image, box: Box, inner: float = 0.7) -> float:
    """Variance of the Laplacian inside the inner ``inner`` of the box, output ÷ target."""
    inner_box = box.scaled(inner)
    base = laplacian_variance(target, inner_box)
    return laplacian_variance(output, inner_box) / base if base > 0 else float("nan")


# ---------------------------------------------------------------- regions from landmarks


def _poly_mask(shape: tuple[int, ...], points: Points, hull: bool = True) -> Mask:
    mask = np.zeros(shape[:2], dtype=np.uint8)
    pts = np.round(points).astype(np.int32)
    if hull:
        pts = cv2.convexHull(pts)
    cv2.fillPoly(mask, [pts.reshape(-1, 1, 2)], 1)
    return mask.astype(bool)


def face_hull_mask(shape: tuple[int, ...], landmarks: Points) -> Mask:
    """Convex hull of the jaw line and the eyebrows (dlib points 0–26)."""
    return _poly_mask(shape, landmarks[0:27])


def face_centre_mask(shape: tuple[int, ...], landmarks: Points) -> Mask:
    """Cheeks and nose: hull of jaw points 1–3, 13–15, the nose (27–35), eyes and mouth cut out."""
    lm = landmarks
    centre = _poly_mask(shape, np.concatenate([lm[1:4], lm[13:16], lm[27:36]]))
    size = float(np.ptp(lm[:, 0]))
    k = max(3, int(round(size * 0.06)) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    cut = np.zeros(shape[:2], dtype=np.uint8)
    for idx in (slice(36, 42), slice(42, 48), slice(48, 60)):
        cut |= _poly_mask(shape, lm[idx]).astype(np.uint8)
    cut = cv2.dilate(cut, kernel).astype(bool)
    return centre & ~cut


def inner_lip_mask(shape: tuple[int, ...], landmarks: Points) -> Mask:
    """The inner-lip polygon (dlib points 60–67), as drawn (not its hull)."""
    return _poly_mask(shape, landmarks[60:68], hull=False)


def mouth_opening(landmarks: Points) -> float:
    """Inner-lip gap (mean of points 61/67, 62/66, 63/65) ÷ mouth width (48–54)."""
    gap = np.mean([np.linalg.norm(landmarks[a] - landmarks[b]) for a, b in ((61, 67), (62, 66), (63, 65))])
    width = np.linalg.norm(landmarks[54] - landmarks[48])
    return float(gap / width) if width > 0 else 0.0


def skin_like(image: Image) -> Mask:
    """A loose YCrCb skin rule; a grey image (Cr = Cb = 128) counts as skin everywhere."""
    ycrcb = cv2.cvtColor(image, cv2.COLOR_BGR2YCrCb)
    cr, cb = ycrcb[..., 1].astype(np.int16), ycrcb[..., 2].astype(np.int16)
    if np.abs(cr - 128).max() <= 2 and np.abs(cb - 128).max() <= 2:
        return np.ones(image.shape[:2], dtype=bool)
    y = ycrcb[..., 0]
    return (cr >= 133) & (cr <= 180) & (cb >= 77) & (cb <= 135) & (y >= 40)


# ---------------------------------------------------------------- colour


def lab(image: Image) -> npt.NDArray[np.float32]:
    """CIELAB (L 0–100, a, b), OpenCV's float conversion (sRGB, D65)."""
    return cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_BGR2Lab)


def mean_lab(image: Image, mask: Mask) -> npt.NDArray[np.float64]:
    return lab(image)[mask].astype(np.float64).mean(axis=0)


def delta_e76(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> float:
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))


def surround_ring_mask(output: Image, target: Image, landmarks: Points, max_delta_e: float = 15.0) -> Mask:
    """Skin around the face that the swap left unchanged.

    A band outside the face hull extended upwards over the forehead (1.15× the
    hull, minus the hull grown by 4 %), keeping only pixels identical in output and
    target, at least 3 px away from any changed pixel, skin-coloured in the target and
    within ``max_delta_e`` (ΔE76) of the target's own cheeks-and-nose mean (drops hair).
    """
    shape = target.shape
    lm = landmarks
    size = float(max(np.ptp(lm[:, 0]), np.ptp(lm[:, 1])))
    brow_up = lm[17:27] - np.array([0.0, 0.25 * size])  # the forehead above the brows
    outer_points = np.concatenate([lm[0:17], brow_up])
    centre = outer_points.mean(axis=0)
    outer = _poly_mask(shape, centre + (outer_points - centre) * 1.15)
    inner = _poly_mask(shape, centre + (np.concatenate([lm[0:17], lm[17:27]]) - centre) * 1.04)
    changed = np.abs(output.astype(np.int16) - target.astype(np.int16)).sum(axis=2) > 0
    near_changed = cv2.dilate(changed.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    ring = outer & ~inner & ~near_changed & skin_like(target)
    if ring.any():  # skin, not hair or background: within ``max_delta_e`` of the target's own cheeks
        centre = mean_lab(target, face_centre_mask(shape, lm))
        ring &= np.linalg.norm(lab(target) - centre.astype(np.float32), axis=2) <= max_delta_e
    return ring


@dataclass(frozen=True)
class ColourReport:
    delta_e_out: float  # ΔE76(centre of the output, ring)
    delta_e_target: float  # ΔE76(centre of the target, ring)
    delta_e_rel: float  # ΔE76(centre of the output, centre of the target): the goal figure
    d_lightness: float  # L(out centre) − L(target centre): > 0 paler
    d_a: float  # a(out) − a(target): > 0 pinker/redder
    d_b: float  # b(out) − b(target): > 0 yellower
    ring_pixels: int


def colour_report(output: Image, target: Image, landmarks: Points) -> ColourReport:
    centre = face_centre_mask(target.shape, landmarks)
    ring = surround_ring_mask(output, target, landmarks)
    c_out, c_tgt = mean_lab(output, centre), mean_lab(target, centre)
    if ring.sum() >= 30:
        r = mean_lab(target, ring)
        de_out, de_tgt = delta_e76(c_out, r), delta_e76(c_tgt, r)
    else:
        de_out = de_tgt = float("nan")
    diff = c_out - c_tgt
    return ColourReport(de_out, de_tgt, delta_e76(c_out, c_tgt), float(diff[0]), float(diff[1]), float(diff[2]), int(ring.sum()))


def max_mean_chroma(image: Image, mask: Mask) -> float:
    """max(mean |a|, mean |b|) over ``mask`` (0 for a grey image)."""
    values = lab(image)[mask]
    return float(max(np.abs(values[:, 1]).mean(), np.abs(values[:, 2]).mean())) if len(values) else float("nan")


# ---------------------------------------------------------------- edges


def changed_region(output: Image, target: Image, face: Box, threshold: int = 2) -> Mask:
    """Where the swap changed the frame: |out − target| summed over channels > threshold, cleaned.

    Open 3×3 then close 5×5, keep the connected component that overlaps the face box
    most, fill its holes (a kept mouth inside the face stays part of the region).
    """
    diff = np.abs(output.astype(np.int16) - target.astype(np.int16))
    if diff.ndim == 3:
        diff = diff.sum(axis=2)
    raw = (diff > threshold).astype(np.uint8)
    raw = cv2.morphologyEx(raw, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    raw = cv2.morphologyEx(raw, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    count, labels = cv2.connectedComponents(raw, connectivity=8)
    if count <= 1:
        return np.zeros(raw.shape, dtype=bool)
    in_box = labels[face.mask(raw.shape)]
    votes = np.bincount(in_box[in_box > 0], minlength=count)
    best = int(np.argmax(votes)) if votes.max() > 0 else 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    component = (labels == best).astype(np.uint8)
    contours, _ = cv2.findContours(component, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros_like(component)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled.astype(bool)


def boundary_bands(region: Mask, width: int) -> tuple[Mask, Mask]:
    """(band 1, band 2): the rings of ``width`` px just inside the region's contour, then further in.

    Pixels on the image border are not treated as a boundary (a region cut by the frame edge).
    """
    padded = cv2.copyMakeBorder(region.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_REPLICATE)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
    band1 = region & (dist > 0) & (dist <= width)
    band2 = region & (dist > width) & (dist <= 2 * width)
    return band1, band2


def gradient_magnitude(image: Image) -> npt.NDArray[np.float32]:
    grey = _grey(image)
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    return np.asarray(cv2.magnitude(gx, gy), dtype=np.float32)


def band_ratio(image: Image, band1: Mask, band2: Mask) -> float:
    g = gradient_magnitude(image)
    if band1.sum() == 0 or band2.sum() == 0:
        return float("nan")
    inner = float(g[band2].mean())
    return float(g[band1].mean()) / inner if inner > 0 else float("nan")


@dataclass(frozen=True)
class EdgeReport:
    step_out: float  # band 1 ÷ band 2 gradient on the output
    step_target: float  # the same bands on the target (the scene's own ratio)
    width_px: int
    region_px: int


def edge_report(output: Image, target: Image, face: Box) -> EdgeReport:
    width = max(2, int(round(0.04 * face.size)))
    region = changed_region(output, target, face)
    band1, band2 = boundary_bands(region, width)
    return EdgeReport(band_ratio(output, band1, band2), band_ratio(target, band1, band2), width, int(region.sum()))


# ---------------------------------------------------------------- mouth


def mouth_interior_mad(output: Image, target: Image, landmarks: Points, min_opening: float = 0.08) -> float:
    """Mean |out − target| in grey levels inside the target's inner-lip polygon.

    NaN when the lips are closed (``mouth_opening`` below ``min_opening``).
    """
    mask = inner_lip_mask(target.shape, landmarks)
    if mouth_opening(landmarks) < min_opening or not mask.any():
        return float("nan")
    return float(np.abs(_grey(output) - _grey(target))[mask].mean())


# ---------------------------------------------------------------- flicker


def warp_previous(previous: Image, flow: npt.NDArray[np.float32]) -> Image:
    """``previous`` resampled at x + flow(x): frame t−1 brought onto frame t (flow from t to t−1)."""
    h, w = flow.shape[:2]
    grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(previous, grid_x + flow[..., 0], grid_y + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def backward_flow(current: Image, previous: Image) -> npt.NDArray[np.float32]:
    """Farnebäck flow from ``current`` to ``previous`` (so ``previous`` can be warped onto ``current``)."""
    return np.asarray(
        cv2.calcOpticalFlowFarneback(_grey(current).astype(np.uint8), _grey(previous).astype(np.uint8), None, 0.5, 3, 21, 3, 5, 1.1, 0),
        dtype=np.float32,
    )


def flicker_residuals(
    inputs: list[Image], outputs: list[Image], boxes: list[Box | None]
) -> tuple[float, float]:
    """(mean motion-compensated residual of the outputs, of the inputs) inside each frame's face box."""
    res_in: list[float] = []
    res_out: list[float] = []
    for t in range(1, len(inputs)):
        box = boxes[t]
        if box is None:
            continue
        flow = backward_flow(inputs[t], inputs[t - 1])
        mask = box.mask(inputs[t].shape)
        warped_in = warp_previous(inputs[t - 1], flow)
        warped_out = warp_previous(outputs[t - 1], flow)
        res_in.append(float(np.abs(inputs[t].astype(np.float32) - warped_in.astype(np.float32))[mask].mean()))
        res_out.append(float(np.abs(outputs[t].astype(np.float32) - warped_out.astype(np.float32))[mask].mean()))
    if not res_in:
        return float("nan"), float("nan")
    return float(np.mean(res_out)), float(np.mean(res_in))


def flicker_ratio(inputs: list[Image], outputs: list[Image], boxes: list[Box | None]) -> float:
    out, inp = flicker_residuals(inputs, outputs, boxes)
    return out / inp if inp > 0 else float("nan")


# ---------------------------------------------------------------- the naive baseline


def five_points(landmarks: Points) -> Points:
    """dlib 68 → 5: eye centres, nose tip, mouth corners."""
    lm = landmarks
    return np.stack([lm[36:42].mean(axis=0), lm[42:48].mean(axis=0), lm[30], lm[48], lm[54]])


def naive_paste(reference: Image, ref_landmarks: Points, target: Image, tgt_landmarks: Points) -> Image:
    """The issue's baseline: a 5-point similarity warp of the reference face, feathered ellipse, no colour matching."""
    matrix, _ = cv2.estimateAffinePartial2D(five_points(ref_landmarks), five_points(tgt_landmarks), method=cv2.LMEDS)
    if matrix is None:
        return target.copy()
    h, w = target.shape[:2]
    warped = cv2.warpAffine(reference, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    hull = np.concatenate([tgt_landmarks[0:17], tgt_landmarks[17:27] - np.array([0.0, 0.1 * np.ptp(tgt_landmarks[:, 1])])])
    (cx, cy), (ew, eh), angle = cv2.fitEllipse(hull.astype(np.float32))
    mask = np.zeros((h, w), dtype=np.float32)
    cv2.ellipse(mask, ((cx, cy), (ew * 0.9, eh * 0.9), angle), 1.0, thickness=-1)
    sigma = max(1.0, 0.05 * max(ew, eh))
    alpha = cv2.GaussianBlur(mask, (0, 0), sigma)[..., None]
    blended = warped.astype(np.float32) * alpha + target.astype(np.float32) * (1.0 - alpha)
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)
