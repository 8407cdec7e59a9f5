"""A thread-safe, batch-taking wrapper around one LiteRT (``ai-edge-litert``) interpreter.

Batching strategy, measured on the 2-core build box (num_threads=1):

- BlazeFace short/full range cannot be resized to batch N: the graphs reshape
  to a fixed ``[1, anchors, 16]`` and ``allocate_tensors`` fails with a
  broadcast error.
- FaceMesh accepts ``resize_tensor_input`` to N, but it is not faster per item
  (1.69 / 1.74 / 1.85 / 1.92 ms per face at N = 1 / 2 / 4 / 8, and every change
  of N costs ~0.7 ms of re-allocation).

So :meth:`LiteRTModel.run` loops over the batch with the batch-1 interpreter;
batching across users still pays off one level up (one deployment call, one
queue hop, one lock for the whole batch).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt

from mirage.errors import ModelUnavailableError

logger = logging.getLogger(__name__)


_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence file descriptor 2 while LiteRT allocates tensors.

    LiteRT's C++ core prints "INFO: Created TensorFlow Lite XNNPACK delegate
    for CPU." straight to fd 2 (no Python logging to configure), which would
    break the CLI's one-sentence errors. Only model loading is wrapped.
    """
    with _STDERR_LOCK:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):  # no usable fd 2 (embedded interpreters): nothing to silence
            yield
            return
        try:
            with open(os.devnull, "w") as devnull:
                os.dup2(devnull.fileno(), 2)
                yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class LiteRTModel:
    """One ``.tflite`` model; :meth:`run` takes a batch along axis 0 of its single input.

    LiteRT interpreters are not thread-safe, so every call holds a lock.
    """

    def __init__(self, path: Path, num_threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelUnavailableError(f"The LiteRT model file {self.path} does not exist.")
        try:
            self._interpreter = Interpreter(model_path=str(self.path), num_threads=max(1, int(num_threads)))
            with _quiet_native_stderr():
                self._interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as exc:
            raise ModelUnavailableError(f"The LiteRT model {self.path.name} could not be loaded: {exc}.") from exc
        inputs = self._interpreter.get_input_details()
        if len(inputs) != 1:
            raise ModelUnavailableError(f"The LiteRT model {self.path.name} has {len(inputs)} inputs; one was expected.")
        self._input = inputs[0]
        self._outputs = self._interpreter.get_output_details()
        self._lock = threading.Lock()
        logger.debug("loaded %s: input %s, outputs %s", self.path.name, self.input_shape,
                     [tuple(o["shape"]) for o in self._outputs])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one batch-1 input, e.g. (1, 128, 128, 3)."""
        return tuple(int(v) for v in self._input["shape"])

    @property
    def input_name(self) -> str:
        return str(self._input["name"])

    @property
    def output_names(self) -> list[str]:
        return [str(o["name"]) for o in self._outputs]

    @property
    def output_shapes(self) -> list[tuple[int, ...]]:
        """Batch-1 shapes of the outputs, in :meth:`run`'s order."""
        return [tuple(int(v) for v in o["shape"]) for o in self._outputs]

    def run(self, batch: npt.NDArray[np.floating]) -> list[npt.NDArray[np.float32]]:
        """Run N inputs (shape ``(N, *input_shape[1:])``); outputs are concatenated along axis 0."""
        expected = self.input_shape[1:]
        if batch.ndim != len(self.input_shape) or tuple(batch.shape[1:]) != expected:
            raise ValueError(f"{self.path.name} expects a batch of shape (N, {', '.join(map(str, expected))}), got {batch.shape}")
        data = np.ascontiguousarray(batch, dtype=self._input["dtype"])
        n = data.shape[0]
        results: list[list[npt.NDArray[np.float32]]] = [[] for _ in self._outputs]
        with self._lock:
            for i in range(n):
                self._interpreter.set_tensor(self._input["index"], data[i : i + 1])
                self._interpreter.invoke()
                for k, out in enumerate(self._outputs):
                    results[k].append(self._interpreter.get_tensor(out["index"]).copy())
        if n == 0:
            return [np.zeros((0, *shape[1:]), dtype=np.float32) for shape in self.output_shapes]
        return [np.concatenate(parts, axis=0) for parts in results]
