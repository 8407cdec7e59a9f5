"""Stand-ins and packaged faces shared by tests/ and benchmarks/ (never imported by the product).

``models``: ONNX stand-ins with the official models' signatures (face models, enhancers),
``voice``: the RVC path's stand-ins, ``faces``: real faces from installed packages,
``speech``: real speech from espeak-ng and Praat as the independent pitch/formant judge (test-only).
A stand-in is named as one wherever it appears: it is never presented as the real model.
"""
