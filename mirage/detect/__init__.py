"""Face detectors: embedded BlazeFace (LiteRT) and neural SCRFD (ONNX)."""
