"""A training run's peak memory, estimated before it starts (no weights are loaded); and this
process's memory as Linux counts it (now, and its peak since a reset).

The estimate adds the base weights (NF4 or 16/32-bit), the LoRA adapter with its gradients
and optimizer state, the activations of a step under gradient checkpointing (each layer's
input for every layer, and one layer's full activations while its backward recomputes it),
the lean log-probability head's tiles (alignment.engine.lean_head: the logits are never
materialized), and the runtime. On a GPU, attention is SDPA (no score matrix kept). The
per-token constants were fitted to measured runs (SmolLM2-135M on a CPU, docs/benchmarks.md)
and the result is checked against published 7-8B QLoRA figures and meta-device models
(tests/engine/test_memory.py): expect it within about a third, not exactly.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Elements autograd keeps per token for one layer: per hidden unit, per MLP unit, and per
# head and attended position (eager attention on a CPU; SDPA on a GPU keeps none).
ACTIVATION_PER_HIDDEN = 34
ACTIVATION_PER_INTERMEDIATE = 13
ACTIVATION_PER_HEAD_POSITION = 2.5
# What the process holds besides the step. CPU: torch, transformers and TRL, the tokenizer,
# and the buffers the 4-bit load leaves (measured: 1.29 GB once SmolLM2-135M is loaded in
# NF4). GPU: the CUDA context, the kernels' workspaces and the caching allocator's slack.
RUNTIME_MB = {"cpu": 1200, "cuda": 1024}
NF4_BYTES_PER_WEIGHT = 0.5 + 0.0625  # 4 bits and the (double-quantized) block constants
# The lean head's tile (alignment.engine.lean_head): positions by vocabulary entries, in the
# compute dtype and four float32 temporaries of the CPU's torch path.
HEAD_TILE_BYTES_PER_ENTRY = 2 + 4 * 4
# Bytes per trainable weight: float32 weight and gradient, and Adam's two moments in float32
# ("adamw_torch_fused") or 8 bits each ("paged_adamw_8bit"; alignment.engine.spec.OPTIMIZERS).
OPTIMIZER_BYTES = {"adamw_torch_fused": 4 + 4 + 8, "paged_adamw_8bit": 4 + 4 + 2}


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
    trainable_mb: float  # the adapter, its gradients and the optimizer's state
    activations_mb: float
    logits_mb: float  # the log-probability head's working memory
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


def _linear_shapes(shape: dict[str, Any]) -> list[tuple[int, int]]:
    """(in, out) features of one decoder layer's linear layers: q, k, v, o, gate, up, down."""
    hidden = int(shape["hidden_size"])
    intermediate = int(shape.get("intermediate_size") or 4 * hidden)
    heads = int(shape.get("num_attention_heads") or max(hidden // 64, 1))
    kv_heads = int(shape.get("num_key_value_heads") or heads)
    head_dim = int(shape.get("head_dim") or hidden // heads)
    return [
        (hidden, heads * head_dim),
        (hidden, kv_heads * head_dim),
        (hidden, kv_heads * head_dim),
        (heads * head_dim, hidden),
        (hidden, intermediate),
        (hidden, intermediate),
        (intermediate, hidden),
    ]


def memory_estimate(
    *,
    shape: dict[str, Any],
    method: str,
    batch_size: int,
    tokens_per_sequence: int,
    lora_r: int,
    quantize_4bit: bool,
    compute_bytes: int,
    device: str = "cpu",
    optimizer: str = "adamw_torch_fused",
) -> MemoryEstimate:
    """`tokens_per_sequence`: prompt and response, as the batch pads them. `device`: "cpu"
    or "cuda"."""
    hidden = int(shape["hidden_size"])
    layers = int(shape["num_hidden_layers"])
    vocab = int(shape["vocab_size"])
    intermediate = int(shape.get("intermediate_size") or 4 * hidden)
    heads = int(shape.get("num_attention_heads") or max(hidden // 64, 1))
    linears = _linear_shapes(shape)
    linear = layers * sum(i * o for i, o in linears)
    embeddings = vocab * hidden * (1 if shape.get("tie_word_embeddings", True) else 2)
    weight_bytes = (
        linear * (NF4_BYTES_PER_WEIGHT if quantize_4bit else compute_bytes)
        + embeddings * compute_bytes
    )
    lora = layers * sum(lora_r * (i + o) for i, o in linears)
    # Paired methods run chosen and rejected together; KTO runs its batch and a KL batch.
    sequences = batch_size * 2 if method in ("dpo", "orpo", "simpo", "kto") else batch_size
    tokens = sequences * tokens_per_sequence
    attention = 0.0 if device == "cuda" else ACTIVATION_PER_HEAD_POSITION * heads
    one_layer = tokens * (
        ACTIVATION_PER_HIDDEN * hidden
        + ACTIVATION_PER_INTERMEDIATE * intermediate
        + attention * tokens_per_sequence
    )
    # Gradient checkpointing: every layer's input is kept, one layer's activations at a time.
    activations = (tokens * layers * hidden + one_layer) * compute_bytes
    head = (
        min(tokens, 256) * min(vocab, 32768) * HEAD_TILE_BYTES_PER_ENTRY
        + tokens * hidden * (4 + compute_bytes)  # the float32 gradient and the final states
    )
    mb = 2**20
    parts = {
        "weights_mb": weight_bytes / mb,
        "trainable_mb": lora * OPTIMIZER_BYTES[optimizer] / mb,
        "activations_mb": activations / mb,
        "logits_mb": head / mb,
        "runtime_mb": float(RUNTIME_MB[device]),
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
