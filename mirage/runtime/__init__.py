"""Model runtimes: LiteRT interpreters, ONNX Runtime sessions, batch rewrites."""
