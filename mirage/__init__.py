"""Mirage model library: face detection, landmarks, swapping and model provisioning.

No Ray imports here: ``deployments/`` and ``serve_app/`` wrap this library.
Images are ``numpy.uint8`` arrays in OpenCV's BGR order, shape ``(H, W, 3)``,
unless a function says otherwise; models convert at their own boundary.
"""

from __future__ import annotations

__version__ = "0.1.0"
