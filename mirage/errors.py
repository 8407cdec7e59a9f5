"""The few exception types Mirage raises on purpose.

Each carries a message meant for a person: the CLI prints ``str(exc)`` as one
sentence, the server returns it in a 4xx body or a data-channel error.
"""

from __future__ import annotations


class MirageError(Exception):
    """Base class: an expected failure with a human-readable message."""


class InvalidImageError(MirageError):
    """Input is not a usable image (empty, not an image, too large, undecodable)."""


class NoFaceError(MirageError):
    """No face was found where one is required (e.g. in the reference photo)."""


class ModelUnavailableError(MirageError):
    """A model file is missing, disabled or failed to load."""


class ProvisioningError(MirageError):
    """Downloading or verifying a model failed."""


class ChecksumError(ProvisioningError):
    """A downloaded or present file does not match its manifest sha256."""


class ConfigError(MirageError, ValueError):
    """A configuration value (an environment variable) that cannot be used; the message names it
    and the values it accepts. Raised at start-up, where the environment is read (mirage.env)."""
