"""mirage.env: one behaviour for every environment variable (unset/blank: default; malformed or
out of bounds: ConfigError naming the variable and what it accepts)."""

from __future__ import annotations

import pytest

from mirage.env import read_bool, read_choice, read_float, read_int, read_list, read_str
from mirage.errors import ConfigError, MirageError
from mirage.runtime.onnx import OrtConfig
from mirage.runtime.select import RuntimeConfig
from mirage.voice.config import VoiceDefaults
from mirage.webrtc.guard import IcePolicy
from mirage.weights.provision import ProvisionConfig
from serve_app.settings import Settings


def test_config_error_is_a_mirage_error_and_a_value_error() -> None:
    assert issubclass(ConfigError, MirageError) and issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("raw", [None, "", "   "])
def test_unset_or_blank_gives_the_default(raw: str | None) -> None:
    env = {} if raw is None else {"X": raw}
    assert read_bool(env, "X", True) is True and read_bool(env, "X", False) is False
    assert read_int(env, "X", 7, lo=1, hi=9) == 7
    assert read_float(env, "X", 2.5, positive=True) == 2.5
    assert read_choice(env, "X", "blur", ("blur", "hold")) == "blur"
    assert read_str(env, "X", "d") == "d" and read_str(env, "X") is None
    assert read_list(env, "X", ("a",)) == ("a",)


@pytest.mark.parametrize(("raw", "want"), [("1", True), ("TRUE", True), (" yes ", True), ("On", True),
                                           ("0", False), ("false", False), ("NO", False), ("off", False)])
def test_bool_words(raw: str, want: bool) -> None:
    assert read_bool({"MIRAGE_X": raw}, "MIRAGE_X", not want) is want


@pytest.mark.parametrize("raw", ["maybe", "2", "yess", "-1", "tru e"])
def test_bool_malformed(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        read_bool({"MIRAGE_X": raw}, "MIRAGE_X", True)
    message = str(info.value)
    assert message.startswith("MIRAGE_X must be 1 or 0") and repr(raw.strip()) in message and message.endswith(".")


def test_int_values_and_bounds() -> None:
    assert read_int({"N": " 42 "}, "N", 1) == 42
    assert read_int({"N": "-3"}, "N", 1) == -3
    assert read_int({"N": "+5"}, "N", 1, lo=5, hi=5) == 5
    assert read_int({"N": "1"}, "N", 3, lo=1, hi=8) == 1 and read_int({"N": "8"}, "N", 3, lo=1, hi=8) == 8
    with pytest.raises(ConfigError, match=r"^N must be a whole number between 1 and 8, got 9\.$"):
        read_int({"N": "9"}, "N", 3, lo=1, hi=8)
    with pytest.raises(ConfigError, match=r"^N must be a whole number between 1 and 8, got 0\.$"):
        read_int({"N": "0"}, "N", 3, lo=1, hi=8)
    with pytest.raises(ConfigError, match="of at least 1"):
        read_int({"N": "-1"}, "N", 3, lo=1)
    with pytest.raises(ConfigError, match="of at most 4"):
        read_int({"N": "5"}, "N", 3, hi=4)


@pytest.mark.parametrize("raw", ["many", "2.0", "1e3", "0x10", "\u0666\u0660", "1_000", "3 4", "--2"])
def test_int_malformed(raw: str) -> None:
    with pytest.raises(ConfigError, match=r"^N must be a whole number"):
        read_int({"N": raw}, "N", 3)


def test_float_values_and_bounds() -> None:
    assert read_float({"F": "0.25"}, "F", 1.0) == 0.25
    assert read_float({"F": "2"}, "F", 1.0) == 2.0
    assert read_float({"F": ".5"}, "F", 1.0) == 0.5 and read_float({"F": "1e-3"}, "F", 1.0) == 0.001
    assert read_float({"F": "1"}, "F", 0.5, lo=0, hi=1) == 1.0
    with pytest.raises(ConfigError, match=r"^F must be a number between 0 and 1, got 1\.5\.$"):
        read_float({"F": "1.5"}, "F", 0.5, lo=0, hi=1)
    with pytest.raises(ConfigError, match=r"^F must be a positive number, got 0\.$"):
        read_float({"F": "0"}, "F", 60.0, positive=True)
    with pytest.raises(ConfigError, match="positive"):
        read_float({"F": "-4"}, "F", 60.0, positive=True)


@pytest.mark.parametrize("raw", ["fast", "nan", "inf", "-inf", "1,5", "1e999", "0x1p3"])
def test_float_malformed(raw: str) -> None:
    with pytest.raises(ConfigError, match=r"^F must be a number"):
        read_float({"F": raw}, "F", 1.0)


def test_choice() -> None:
    choices = ("blur", "hold", "passthrough")
    assert read_choice({"C": "HOLD"}, "C", "blur", choices) == "hold"
    with pytest.raises(ConfigError, match=r"^C must be one of blur, hold, passthrough, got 'reveal'\.$"):
        read_choice({"C": "reveal"}, "C", "blur", choices)


def test_str_and_list() -> None:
    assert read_str({"S": "  /models  "}, "S") == "/models"
    assert read_str({"S": " se cret "}, "S", strip=False) == " se cret "
    assert read_list({"L": " a, ,b ,c,"}, "L") == ("a", "b", "c")


def test_long_values_are_cut_in_the_message() -> None:
    with pytest.raises(ConfigError) as info:
        read_int({"N": "x" * 500}, "N", 1)
    assert len(str(info.value)) < 120


# --- every reader of the environment behaves the same -------------------------------------------


@pytest.mark.parametrize(
    ("reader", "env", "name"),
    [
        (Settings.from_env, {"MIRAGE_BADGE": "maybe"}, "MIRAGE_BADGE"),
        (Settings.from_env, {"MIRAGE_MAX_FACES": "many"}, "MIRAGE_MAX_FACES"),
        (Settings.from_env, {"MIRAGE_MAX_FACES": "99"}, "MIRAGE_MAX_FACES"),
        (Settings.from_env, {"MIRAGE_FALLBACK": "reveal"}, "MIRAGE_FALLBACK"),
        (Settings.from_env, {"MIRAGE_TURN_TTL": "5"}, "MIRAGE_TURN_TTL"),
        (Settings.from_env, {"MIRAGE_FORCE_RELAY": "2"}, "MIRAGE_FORCE_RELAY"),
        (Settings.from_env, {"MIRAGE_VOICE_ENABLE": "perhaps"}, "MIRAGE_VOICE_ENABLE"),
        (Settings.from_env, {"MIRAGE_VOICE_DEFAULT": "nope"}, "MIRAGE_VOICE_DEFAULT"),
        (VoiceDefaults.from_env, {"MIRAGE_VOICE_CHUNK_MS": "7"}, "MIRAGE_VOICE_CHUNK_MS"),
        (VoiceDefaults.from_env, {"MIRAGE_VOICE_FALLBACK": "passthrough"}, "MIRAGE_VOICE_FALLBACK"),
        (OrtConfig.from_env, {"MIRAGE_CUDA_ONLY": "yes please"}, "MIRAGE_CUDA_ONLY"),
        (OrtConfig.from_env, {"MIRAGE_ORT_THREADS": "0"}, "MIRAGE_ORT_THREADS"),
        (RuntimeConfig.from_env, {"MIRAGE_CUDA_ONLY": "maybe"}, "MIRAGE_CUDA_ONLY"),
        (RuntimeConfig.from_env, {"MIRAGE_TRT_PRECISION": "int8"}, "MIRAGE_TRT_PRECISION"),
        (RuntimeConfig.from_env, {"MIRAGE_TRT_OPT_BATCH": "two"}, "MIRAGE_TRT_OPT_BATCH"),
        (ProvisionConfig.from_env, {"MIRAGE_OFFLINE": "sometimes"}, "MIRAGE_OFFLINE"),
        (ProvisionConfig.from_env, {"MIRAGE_DOWNLOAD_TIMEOUT": "-1"}, "MIRAGE_DOWNLOAD_TIMEOUT"),
    ],
)
def test_every_reader_refuses_a_malformed_variable_by_name(reader: object, env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError) as info:
        reader(env)  # type: ignore[operator]
    assert str(info.value).startswith(name + " must be"), str(info.value)


def test_the_old_lenient_spellings_still_parse() -> None:
    s = Settings.from_env({"MIRAGE_BADGE": "off", "MIRAGE_FALLBACK": " HOLD ", "MIRAGE_MAX_FACES": "8"})
    assert not s.session.badge and s.session.fallback == "hold" and s.session.max_faces == 8
    assert RuntimeConfig.from_env({"MIRAGE_CUDA_ONLY": "true"}).cuda_only
    assert OrtConfig.from_env({"MIRAGE_CUDA_ONLY": "on"}).cuda_only
    assert IcePolicy.from_env({"MIRAGE_ICE_HOST_ADDRESSES": " 127.0.0.1 , lo "}).host_addresses == ("127.0.0.1", "lo")


# --- deployments read the environment in their constructor (the replica's edge), nothing below does -----


def test_swapper_and_voice_replicas_take_model_settings_from_their_environment(tmp_path: object) -> None:
    from deployments.swapper import SwapperConfig, _with_model_settings
    from deployments.voice import VoiceCoreConfig
    from deployments.voice import _with_model_settings as voice_settings

    env = {"MIRAGE_MODELS_DIR": str(tmp_path), "MIRAGE_CUDA_ONLY": "1", "MIRAGE_ORT_THREADS": "3", "MIRAGE_ENGINE_DIR": "/e"}
    swapper = _with_model_settings(SwapperConfig(), env)
    assert swapper.provision is not None and str(swapper.provision.models_dir) == str(tmp_path)
    assert swapper.runtime is not None and swapper.runtime.cuda_only and str(swapper.runtime.engine_dir) == "/e"
    assert swapper.ort is not None and swapper.ort.intra_op_threads == 3
    assert _with_model_settings(SwapperConfig(inswapper=False), env) == SwapperConfig(inswapper=False)  # mesh only
    voice = voice_settings(VoiceCoreConfig(), env)
    assert voice.provision is not None and voice.runtime is not None and voice.runtime.cuda_only
    with pytest.raises(ConfigError, match="^MIRAGE_CUDA_ONLY must be"):
        _with_model_settings(SwapperConfig(), {"MIRAGE_CUDA_ONLY": "sure"})


def test_the_library_reads_no_environment_below_the_edges() -> None:
    """No module under mirage/ (the CLI modules and mirage/env.py aside) reads os.environ itself."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "mirage"
    readers = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel == "env.py" or rel.startswith("cli") or "/cli" in rel or rel.startswith("cam/") or rel.startswith("client/load"):
            continue  # the edges: CLI entry points (the desktop client and load generator are CLIs too)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv") and isinstance(node.value, ast.Name) \
                    and node.value.id == "os":
                # ``env = os.environ if env is None else env`` in a from_env(): the edge's default mapping.
                readers.append(f"{rel}:{node.lineno}")
    allowed = {"runtime/onnx.py", "runtime/select.py", "weights/provision.py"}  # from_env(environ=None) defaults
    assert {r.split(":")[0] for r in readers} <= allowed, readers
