"""The model manifest (``configs/models.yaml``): what every model is and where it comes from.

The manifest is data, validated once on load: a malformed file raises
:class:`~mirage.errors.ProvisioningError` naming the file, the entry and the
field, so a typo never surfaces later as a confusing download failure.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mirage.errors import ProvisioningError
from mirage.weights.embedded import EMBEDDED_FILES

Stage = Literal["detect", "landmarks", "identity", "swap", "enhance", "voice"]

DEFAULT_MANIFEST = Path(__file__).resolve().parents[2] / "configs" / "models.yaml"


class TensorSpec(BaseModel):
    """One input or output of a model as its public export declares it (name, shape, dtype)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    #: Dimensions: ints, or a name for a free one (``batch``).
    shape: tuple[int | str, ...]
    dtype: Literal["float32", "float16", "float64", "int64"] = "float32"


class ModelIO(BaseModel):
    """How an image model is fed: its tensors, input size, colour order, value range and
    the 5-point alignment template its training faces were cropped with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inputs: tuple[TensorSpec, ...] = Field(min_length=1)
    outputs: tuple[TensorSpec, ...] = Field(min_length=1)
    size: int | None = Field(default=None, gt=0)
    colour: Literal["rgb", "bgr"] = "rgb"
    #: ``minus_one_to_one``: x / 127.5 - 1 in, (y + 1) * 127.5 out; ``zero_to_one``: x / 255, y * 255.
    normalisation: Literal["minus_one_to_one", "zero_to_one"] = "minus_one_to_one"
    template: str | None = Field(default=None, pattern=r"^[a-z0-9_]+$")


class ModelEntry(BaseModel):
    """One model: identity, location, integrity and licence."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    title: str = Field(min_length=1)
    stage: Stage
    enables: str = Field(min_length=1)
    file: str = Field(min_length=1)
    url: str | None = None
    url_env: str | None = Field(default=None, pattern=r"^[A-Z][A-Z0-9_]*$")
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    size: int | None = Field(default=None, gt=0)
    licence: str = Field(min_length=1)
    commercial_use: bool
    required: bool = False
    embedded: str | None = None
    notes: str | None = None
    #: Tensors and pre-processing (image models whose loader reads them, e.g. the enhancers).
    io: ModelIO | None = None

    @field_validator("file")
    @classmethod
    def _relative_file(cls, value: str) -> str:
        path = PurePosixPath(value)
        if path.is_absolute() or ".." in path.parts or "\\" in value:
            raise ValueError("must be a relative path inside the models directory, without '..'")
        return value

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value

    @field_validator("embedded", mode="before")
    @classmethod
    def _embedded_name(cls, value: Any) -> Any:
        # ``embedded: false`` reads naturally in YAML; it means "not embedded".
        if value is False:
            return None
        if value is not None and value not in EMBEDDED_FILES:
            raise ValueError(f"unknown embedded model {value!r}; known: {', '.join(EMBEDDED_FILES)}")
        return value

    @model_validator(mode="after")
    def _source_is_consistent(self) -> ModelEntry:
        if self.embedded is not None:
            if self.url is not None or self.url_env is not None:
                raise ValueError("an embedded model has no url or url_env")
            if self.file != EMBEDDED_FILES[self.embedded]:
                raise ValueError(f"file must be the wheel's {EMBEDDED_FILES[self.embedded]!r} for embedded {self.embedded!r}")
        elif self.url is None:
            raise ValueError("a model that is not embedded needs a url")
        return self

    @property
    def is_embedded(self) -> bool:
        return self.embedded is not None

    def resolved_url(self, env: Mapping[str, str]) -> str | None:
        """The download URL: ``env[url_env]`` when set and non-empty, else ``url``."""
        if self.url_env:
            override = env.get(self.url_env, "").strip()
            if override:
                return override
        return self.url


class Manifest(BaseModel):
    """All models, by name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = 1
    models: tuple[ModelEntry, ...]

    @model_validator(mode="after")
    def _unique(self) -> Manifest:
        for attr in ("name", "url_env", "file"):
            seen: set[str] = set()
            for entry in self.models:
                value = getattr(entry, attr)
                if value is None or (entry.is_embedded and attr == "file"):
                    continue
                if value in seen:
                    raise ValueError(f"{attr} {value!r} appears twice")
                seen.add(value)
        return self

    @property
    def names(self) -> list[str]:
        return [entry.name for entry in self.models]

    def get(self, name: str) -> ModelEntry:
        for entry in self.models:
            if entry.name == name:
                return entry
        raise ProvisioningError(f"Unknown model {name!r}; known models: {', '.join(self.names)}.")

    def select(self, names: list[str] | tuple[str, ...] | None) -> list[ModelEntry]:
        """Entries for ``names`` (all entries when ``None``), unknown names rejected."""
        if names is None:
            return list(self.models)
        return [self.get(name) for name in names]


def _describe_location(loc: tuple[Any, ...], raw: Any) -> str:
    """``('models', 3, 'sha256')`` -> ``models[3] (inswapper_128).sha256``."""
    parts: list[str] = []
    node = raw
    for key in loc:
        if isinstance(key, int):
            label = f"[{key}]"
            if isinstance(node, list) and key < len(node):
                node = node[key]
                if isinstance(node, dict) and isinstance(node.get("name"), str):
                    label += f" ({node['name']})"
            parts.append(label)
        else:
            parts.append(("." if parts else "") + str(key))
            node = node.get(key) if isinstance(node, dict) else None
    return "".join(parts) or "top level"


def load_manifest(path: Path | None = None) -> Manifest:
    """Read and validate a manifest (default: the repository's ``configs/models.yaml``)."""
    path = Path(path) if path is not None else DEFAULT_MANIFEST
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProvisioningError(f"Cannot read the model manifest {path}: {exc.strerror or exc}.") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ProvisioningError(f"The model manifest {path} is not valid YAML{where}.") from exc
    if not isinstance(raw, dict):
        raise ProvisioningError(f"The model manifest {path} must be a mapping with a 'models' list.")
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = _describe_location(tuple(first["loc"]), raw)
        raise ProvisioningError(f"The model manifest {path} is malformed: {where}: {first['msg']}.") from exc
