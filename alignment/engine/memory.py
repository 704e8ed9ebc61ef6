"""A training run's peak memory, estimated before it starts (no weights are loaded); and this
process's memory as Linux counts it (now, and its peak since a reset).

The estimate adds the base weights (NF4 or 16/32-bit), the LoRA adapter with its gradients
and Adam moments, the activations autograd keeps for a batch, the logits (in float32, with
their log-softmax and gradient), and the runtime itself. The activation constants are fitted
to a measured run (SmolLM2-135M, CPU, bf16, batch 4 of about 250 tokens: 6.6 GB peak RSS,
docs/benchmarks.md), so expect it within about a third, not exactly.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Elements autograd keeps per token and layer: per hidden unit, per MLP unit, and per head
# and attended position (no flash attention on CPU).
ACTIVATION_PER_HIDDEN = 34
ACTIVATION_PER_INTERMEDIATE = 13
ACTIVATION_PER_HEAD_POSITION = 2.5
RUNTIME_MB = 600  # torch, transformers, the tokenizer: what an idle worker process holds
LORA_TARGETS_PER_LAYER = 7  # q, k, v, o, gate, up, down ("all-linear")


def peak_rss_reset() -> None:
    """Start counting this process's peak memory afresh (Linux; elsewhere a no-op, and the
    peak is the process's since it started)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _status_mb(field: str) -> float | None:
    """A memory figure of /proc/self/status ("VmRSS", "VmHWM") in MB; None off Linux."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


def rss_mb() -> float:
    """This process's resident memory now (Linux; elsewhere 0)."""
    return _status_mb("VmRSS") or 0.0


def peak_rss_mb() -> float:
    """This process's peak resident memory since `peak_rss_reset` (or since it started)."""
    peak = _status_mb("VmHWM")
    if peak is not None:
        return peak
    # ru_maxrss is in KiB on Linux.
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


@dataclass(frozen=True)
class MemoryEstimate:
    total_mb: float
    weights_mb: float
    trainable_mb: float  # the adapter, its gradients and Adam's two moments
    activations_mb: float
    logits_mb: float
    runtime_mb: float
    sequences: int  # per optimizer step's forward pass
    tokens_per_sequence: int


def model_shape(model_path: str) -> dict[str, Any] | None:
    """The architecture figures of a local model's config.json; None when there is none."""
    config = Path(model_path) / "config.json"
    if not config.is_file():
        return None
    data: dict[str, Any] = json.loads(config.read_text())
    data = data.get("text_config", data)  # multimodal configs nest the language model
    needed = ("hidden_size", "num_hidden_layers", "vocab_size")
    if not all(isinstance(data.get(k), int) for k in needed):
        return None
    return data


def memory_estimate(
    *,
    shape: dict[str, Any],
    method: str,
    batch_size: int,
    tokens_per_sequence: int,
    lora_r: int,
    quantize_4bit: bool,
    compute_bytes: int,
) -> MemoryEstimate:
    """`tokens_per_sequence`: prompt and response, as the batch pads them."""
    hidden = int(shape["hidden_size"])
    layers = int(shape["num_hidden_layers"])
    vocab = int(shape["vocab_size"])
    intermediate = int(shape.get("intermediate_size") or 4 * hidden)
    heads = int(shape.get("num_attention_heads") or max(hidden // 64, 1))
    kv_heads = int(shape.get("num_key_value_heads") or heads)
    head_dim = int(shape.get("head_dim") or hidden // heads)
    attention = hidden * (heads * head_dim) * 2 + hidden * (kv_heads * head_dim) * 2
    mlp = 3 * hidden * intermediate
    linear = layers * (attention + mlp)
    embeddings = vocab * hidden * (1 if shape.get("tie_word_embeddings", True) else 2)
    weight_bytes = linear * (0.55 if quantize_4bit else compute_bytes) + embeddings * compute_bytes
    lora = layers * LORA_TARGETS_PER_LAYER * lora_r * (hidden + max(hidden, intermediate))
    # Paired methods run chosen and rejected together; KTO runs its batch and a KL batch.
    sequences = batch_size * 2 if method in ("dpo", "orpo", "simpo", "kto") else batch_size
    tokens = sequences * tokens_per_sequence
    per_token_layer = (
        ACTIVATION_PER_HIDDEN * hidden
        + ACTIVATION_PER_INTERMEDIATE * intermediate
        + ACTIVATION_PER_HEAD_POSITION * heads * tokens_per_sequence
    )
    activations = tokens * layers * per_token_layer * compute_bytes
    logits = tokens * vocab * 4 * 3
    mb = 2**20
    parts = {
        "weights_mb": weight_bytes / mb,
        "trainable_mb": lora * 4 * 4 / mb,
        "activations_mb": activations / mb,
        "logits_mb": logits / mb,
        "runtime_mb": float(RUNTIME_MB),
    }
    return MemoryEstimate(
        total_mb=sum(parts.values()),
        sequences=sequences,
        tokens_per_sequence=tokens_per_sequence,
        **parts,
    )


def memory_available_mb() -> float:
    """What this machine gives a run: the first GPU's memory, or the system's RAM."""
    import torch

    if torch.cuda.is_available():
        return float(torch.cuda.get_device_properties(0).total_memory) / 2**20
    return float(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")) / 2**20
