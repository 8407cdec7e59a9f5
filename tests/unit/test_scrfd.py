"""SCRFD: letterbox, distance decoding, NMS, frame coordinates, batched vs looped inference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mirage.detect.scrfd import (
    ScrfdConfig,
    ScrfdDetector,
    anchor_centers,
    decode_outputs,
    letterbox,
)
from mirage.errors import InvalidImageError, ModelUnavailableError
from mirage.runtime.batch_rewrite import make_batch_dynamic
from mirage.runtime.onnx import OrtConfig, OrtModel
from standins.faces import astronaut_bgr, t1_bgr
from standins.models import (
    build_arcface_standin,
    build_scrfd_constant_standin,
    build_scrfd_standin,
    scrfd_raw_outputs,
)

CONFIG = OrtConfig()
BOX = np.array([150.0, 110.0, 240.0, 220.0], np.float32)
KPS = np.array([[175, 150], [215, 150], [195, 170], [180, 195], [212, 195]], np.float32)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("scrfd")


def test_anchor_centres_are_row_major_with_anchors_innermost() -> None:
    centers = anchor_centers(2, 3, 8, 2)
    assert centers.shape == (12, 2)
    np.testing.assert_array_equal(centers[:4], [[0, 0], [0, 0], [8, 0], [8, 0]])
    np.testing.assert_array_equal(centers[6], [0, 8])


def test_decode_recovers_encoded_faces_and_suppresses_duplicates() -> None:
    other_box = np.array([400.0, 300.0, 480.0, 400.0], np.float32)
    other_kps = KPS + [250, 190]
    shifted = BOX + [4, 4, 4, 4]  # overlaps BOX heavily, lower score: NMS removes it
    faint = BOX + [0, 200, 0, 200]  # below the threshold
    raw = scrfd_raw_outputs(
        [(BOX, KPS, 0.93), (other_box, other_kps, 0.81), (shifted, KPS + 4, 0.7), (faint, KPS + [0, 200], 0.3)]
    )
    boxes, scores, kps = decode_outputs(raw, 640, 640, score_threshold=0.5, iou_threshold=0.4)
    np.testing.assert_allclose(scores, [0.93, 0.81], rtol=1e-6)
    np.testing.assert_allclose(boxes, [BOX, other_box], atol=1e-4)
    np.testing.assert_allclose(kps, [KPS, other_kps], atol=1e-4)


def test_decode_other_strides_and_empty() -> None:
    raw = scrfd_raw_outputs([(BOX, KPS, 0.9)], stride=32)
    boxes, _, kps = decode_outputs(raw, 640, 640, 0.5, 0.4)
    np.testing.assert_allclose(boxes, [BOX], atol=1e-4)
    np.testing.assert_allclose(kps, [KPS], atol=1e-4)
    boxes, scores, kps = decode_outputs(scrfd_raw_outputs([]), 640, 640, 0.5, 0.4)
    assert boxes.shape == (0, 4) and scores.shape == (0,) and kps.shape == (0, 5, 2)
    with pytest.raises(ModelUnavailableError, match="does not match"):
        decode_outputs(raw, 320, 320, 0.5, 0.4)


def test_letterbox_keeps_aspect_and_pads_right_bottom() -> None:
    wide = np.full((360, 1280, 3), 200, np.uint8)
    item = letterbox(wide, 640)
    assert item.image.shape == (640, 640, 3) and item.scale == pytest.approx(0.5)
    assert (item.image[:180] == 200).all() and (item.image[180:] == 0).all()
    tall = np.full((800, 400, 3), 100, np.uint8)
    item = letterbox(tall, 640)
    assert item.scale == pytest.approx(0.8)
    assert (item.image[:, :320] == 100).all() and (item.image[:, 320:] == 0).all()
    with pytest.raises(InvalidImageError):
        letterbox(np.zeros((10, 10), np.uint8), 640)


def test_model_path_returns_frame_coordinates(folder: Path) -> None:
    path = build_scrfd_constant_standin(folder / "det_10g_constant_standin.onnx", scrfd_raw_outputs([(BOX, KPS, 0.9)]))
    detector = ScrfdDetector(OrtModel(path, CONFIG, "scrfd-constant"))
    frames = [np.zeros((720, 1280, 3), np.uint8), np.zeros((1000, 500, 3), np.uint8)]
    results = detector.detect(frames)
    assert [len(r) for r in results] == [1, 1]
    for frame, (det,) in zip(frames, results):
        scale = 640 / max(frame.shape[:2])
        np.testing.assert_allclose(det.box, BOX / scale, rtol=1e-5)
        np.testing.assert_allclose(det.keypoints, KPS / scale, rtol=1e-5)
        assert det.score == pytest.approx(0.9)
        assert det.box.dtype == np.float32 and det.keypoints.shape == (5, 2)


def test_batched_and_looped_inference_agree_on_real_faces(folder: Path) -> None:
    fixed_path = build_scrfd_standin(folder / "det_10g_standin.onnx")
    dynamic_path = folder / "det_10g_dynamic_standin.onnx"
    make_batch_dynamic(fixed_path, dynamic_path)
    fixed_model, dynamic_model = OrtModel(fixed_path, CONFIG, "scrfd"), OrtModel(dynamic_path, CONFIG, "scrfd-n")
    assert not fixed_model.dynamic_batch and dynamic_model.dynamic_batch
    images = [astronaut_bgr(), t1_bgr(), astronaut_bgr()[:, ::-1].copy()]
    # Random weights: pick a threshold that lets a few dozen anchors through.
    probe = ScrfdDetector(fixed_model)
    raw = fixed_model.run({"input.1": probe.blob([probe.prepare(images[1])])})
    scores = np.concatenate([raw[i].ravel() for i in range(3)])
    threshold = float(np.sort(scores)[-40])
    config = ScrfdConfig(score_threshold=threshold, iou_threshold=0.4)
    looped = ScrfdDetector(fixed_model, config).detect(images)
    batched = ScrfdDetector(dynamic_model, config).detect(images)
    assert sum(len(r) for r in looped) > 0
    assert [len(r) for r in batched] == [len(r) for r in looped]
    for got, want in zip(batched, looped):
        for a, b in zip(got, want):
            np.testing.assert_allclose(a.box, b.box, rtol=1e-4, atol=1e-3)
            np.testing.assert_allclose(a.keypoints, b.keypoints, rtol=1e-4, atol=1e-3)
            assert a.score == pytest.approx(b.score, abs=1e-5)


def test_not_an_scrfd_model(folder: Path) -> None:
    path = build_arcface_standin(folder / "w600k_r50_standin.onnx")
    with pytest.raises(ModelUnavailableError, match="not an SCRFD model"):
        ScrfdDetector(OrtModel(path, CONFIG, "arcface"))


def test_blob_is_rgb_scaled_by_128(folder: Path) -> None:
    path = build_scrfd_constant_standin(folder / "det_10g_blob_standin.onnx", scrfd_raw_outputs([]))
    detector = ScrfdDetector(OrtModel(path, CONFIG, "scrfd-constant"))
    image = np.zeros((640, 640, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 10, 20, 30  # B, G, R
    blob = detector.blob([detector.prepare(image)])
    assert blob.shape == (1, 3, 640, 640) and blob.dtype == np.float32
    np.testing.assert_allclose(blob[0, :, 5, 5], [(30 - 127.5) / 128, (20 - 127.5) / 128, (10 - 127.5) / 128])
