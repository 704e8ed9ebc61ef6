"""Preference training: (Q)LoRA DPO and its sibling losses with TRL."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from alignment.engine.allocator import malloc_tuned_for_tensors
from alignment.engine.checkpoints import (
    file_sha256,
)
from alignment.engine.generation import adapter_validate
from alignment.engine.memory import (
    MemoryEstimate,
    memory_available_mb,
    memory_estimate,
    model_shape,
)
from alignment.engine.spec import Hyperparameters, hyperparameters_validate

if TYPE_CHECKING:
    pass

ADAPTER_DIR_NAME = "adapter"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"

# The methods and their losses are defined with the hyperparameters (alignment.engine.spec).
REFERENCE_FREE = ("orpo", "simpo")
REFERENCES = ("start", "base")  # or the path of an adapter directory
PAIR_KINDS = ("preference", "tie", "both_bad", "good", "bad")
# A rating's kinds: one response, desirable or not (`chosen` holds it, `rejected` repeats it).
RATING_KINDS = ("good", "bad")


@dataclass(frozen=True)
class PreferenceExample:
    prompt: tuple[Mapping[str, str], ...]  # chat messages, ending with a user turn
    chosen: str
    rejected: str
    # "tie": both equally good, "both_bad": neither acceptable; only KTO trains on them (as
    # two desirable or two undesirable completions). "good" / "bad": a rating of one response
    # (`chosen`, repeated as `rejected`), one desirable or undesirable completion for KTO.
    kind: str = "preference"
    # False for a response cut off at the token limit: trained and scored without the end of
    # its turn (alignment.engine.turns).
    chosen_complete: bool = True
    rejected_complete: bool = True


@dataclass(frozen=True)
class TrainingConfig(Hyperparameters):
    """The hyperparameters (alignment.engine.spec, keyword-only) and what to train where."""

    model: str
    models_dir: str
    output_dir: str
    quantize_4bit: bool = True  # QLoRA (bitsandbytes NF4); False = plain LoRA in full precision
    init_adapter: str | None = None  # continue training an existing adapter
    init_adapter_sha256: str | None = None  # its adapter_model.safetensors must hash to this
    # The reference policy of dpo and kto: "start" (the policy training starts from: the base,
    # or base + init_adapter), "base" (the base model alone), or an adapter directory (base +
    # that adapter, e.g. the previous round's policy while training a fresh adapter).
    reference: str = "start"
    reference_sha256: str | None = None  # an adapter reference's weights must hash to this
    trust_remote_code: bool = False
    # Steps between checkpoints (0: none). A run restarted with the same output_dir, settings
    # and examples resumes from its newest complete checkpoint.
    checkpoint_steps: int = 50


@dataclass(frozen=True)
class TrainingProgress:
    step: int
    total_steps: int
    epoch: float
    loss: float | None
    reward_accuracy: float | None
    reward_margin: float | None
    chosen_reward: float | None
    rejected_reward: float | None
    elapsed_s: float
    chosen_logp: float | None = None  # mean summed log-probability of the batch's chosen
    rejected_logp: float | None = None
    tokens_per_s: float | None = None  # input tokens (padding included) per second so far
    memory_mb: float | None = None  # peak GPU memory allocated, or the process's peak RSS
    eta_s: float | None = None  # at the pace so far
    checkpoint_step: int | None = None  # the newest complete checkpoint's step


# What `on_progress` may answer: True stops training after this step (a cancelled run); the
# adapter as it stands is saved all the same.
ProgressCallback = Callable[[TrainingProgress], bool | None]
# Called as each phase of a run begins ("loading the model", "reference log-probabilities",
# "training", ...): what a run page says before and between the steps.
PhaseCallback = Callable[[str], None]


class RefLogpStore(Protocol):
    """Reference log-probabilities kept between runs: per example (by its position in the
    examples given to `train`), (chosen, rejected) summed log-probabilities under the
    reference named by `key` (see `reference_key`). `get` answers None for each one not
    stored (those alone are computed); `put` gets the positions trained on (a pair whose
    prompt alone fills max_length is left out)."""

    def get(self, key: str, count: int) -> list[tuple[float, float] | None]: ...

    def put(self, key: str, values: Mapping[int, tuple[float, float]]) -> None: ...


@dataclass(frozen=True)
class TrainingResult:
    adapter_dir: str  # output_dir/adapter: adapter_model.safetensors + adapter_config.json
    adapter_sha256: str  # of adapter_model.safetensors
    steps: int
    train_loss: float
    elapsed_s: float
    history: tuple[TrainingProgress, ...]
    validation: ValidationFigures | None = None
    # DPO: the reference log-probabilities' key, and how many pairs took them from the store
    # rather than a forward pass of the reference model.
    reference_key: str | None = None
    ref_logps_reused: int = 0
    # Examples left out because their prompt alone fills max_length.
    examples_dropped: int = 0
    stopped_at_step: int | None = None  # when on_progress asked to stop (a cancelled run)
    memory_estimate_mb: int | None = None  # the pre-flight estimate (alignment.engine.memory)
    # The training pairs the trained policy disagrees with, most disagreeing first (none when
    # training stopped early).
    contradictions: tuple[Contradiction, ...] = ()
    resumed_from_step: int | None = None  # the checkpoint this training continued from
    # Newer checkpoints passed over on resume, each with the reason (incomplete, bad hash).
    checkpoints_skipped: tuple[str, ...] = ()
    # Each phase of the run (see PhaseCallback) and the seconds it took, in order.
    phase_seconds: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Contradiction:
    """A training pair whose human label the trained policy contradicts: its implicit reward
    (beta times the log-probability gained over the reference) is higher for the rejected
    response than for the chosen one; for ORPO and SimPO (no reference), its per-token
    log-probability is."""

    index: int  # in the examples given to `train`
    margin: float  # chosen minus rejected; below 0


@dataclass(frozen=True)
class ValidationFigures:
    """How the held-out pairs are judged by the policy before and after training.

    `accuracy_*`: the share of pairs whose chosen response the policy finds likelier, per
    token (a reference-free preference, comparable before and after). `reward_accuracy`:
    DPO's implicit reward accuracy, the share whose chosen response gained more
    log-probability over the run's reference than the rejected one did (ORPO and SimPO have
    no reference: over the starting policy); `reward_margin`: the mean gain difference
    times beta."""

    pairs: int
    accuracy_before: float
    accuracy_after: float
    reward_accuracy: float
    reward_margin: float


def training_config_validate(config: TrainingConfig) -> None:
    """Raise ValueError naming the first invalid field of ``config``."""
    hyperparameters_validate(config)
    if isinstance(config.checkpoint_steps, bool) or not (
        isinstance(config.checkpoint_steps, int) and config.checkpoint_steps >= 0
    ):
        raise ValueError(
            f"checkpoint_steps must be a whole number >= 0, got {config.checkpoint_steps!r}"
        )
    if not config.output_dir:
        raise ValueError("output_dir must not be empty")
    if config.init_adapter is not None:
        adapter_validate(config.init_adapter, sha256=config.init_adapter_sha256)
    if config.reference not in REFERENCES:
        if config.method in REFERENCE_FREE:
            raise ValueError(f"{config.method} uses no reference model; leave reference 'start'")
        adapter_validate(config.reference, sha256=config.reference_sha256)


def examples_validate(examples: Sequence[PreferenceExample], method: str = "dpo") -> None:
    if len(examples) == 0:
        raise ValueError("no preference examples to train on")
    for index, example in enumerate(examples):
        if example.kind not in PAIR_KINDS:
            raise ValueError(f"example {index}: unknown kind {example.kind!r}")
        if example.kind != "preference" and method != "kto":
            raise ValueError(
                f"example {index}: a {example.kind} pair has no preferred response; only kto "
                "trains on ties, both-bad pairs and ratings (good, bad)"
            )
        if len(example.prompt) == 0:
            raise ValueError(f"example {index}: prompt has no messages")
        for message in example.prompt:
            if not isinstance(message.get("role"), str) or not isinstance(
                message.get("content"), str
            ):
                raise ValueError(
                    f"example {index}: each prompt message needs string 'role' and 'content'"
                )
        if example.prompt[-1]["role"] != "user":
            raise ValueError(f"example {index}: prompt must end with a user message")
        if not isinstance(example.chosen, str) or not isinstance(example.rejected, str):
            raise ValueError(f"example {index}: chosen and rejected must be strings")


def train(
    config: TrainingConfig,
    examples: Sequence[PreferenceExample],
    *,
    validation: Sequence[PreferenceExample] = (),
    ref_store: RefLogpStore | None = None,
    on_progress: ProgressCallback | None = None,
    on_phase: PhaseCallback | None = None,
) -> TrainingResult:
    """Train a LoRA adapter on preference pairs and save it to ``output_dir/adapter``.

    Every ``checkpoint_steps`` steps a checkpoint (adapter, optimizer, scheduler, RNG and
    step) is written atomically under ``output_dir/checkpoints`` (alignment.engine.
    checkpoints); called again with the same output_dir, settings and examples, training
    resumes from the newest complete one, its step count and loss curve continuing.

    The reference policy is the model without the trained adapter: the base, or the
    ``init_adapter`` when continuing. ``validation``: held-out preference pairs, scored
    before and after training (TrainingResult.validation). ``ref_store`` (DPO): reference
    log-probabilities computed once, then reused by every epoch and by later runs with the
    same reference. ``on_progress`` is called after every optimizer step, ``on_phase`` as each
    phase begins. Raises ValueError for an invalid config or no examples.
    """
    training_config_validate(config)
    examples_validate(examples, config.method)
    if validation:
        examples_validate(validation)  # preferences only: a tie has no side to get right
    from alignment.engine import training_run  # torch, transformers and TRL: loaded here

    clock = _PhaseClock(on_phase)
    with malloc_tuned_for_tensors():
        result = training_run.run(config, examples, validation, ref_store, on_progress, clock)
    return dataclasses.replace(result, phase_seconds=clock.seconds())


class _PhaseClock:
    """Passes each phase on to `on_phase` and times it."""

    def __init__(self, on_phase: PhaseCallback | None) -> None:
        self.on_phase = on_phase
        self.started: list[tuple[str, float]] = []

    def __call__(self, phase: str) -> None:
        self.started.append((phase, time.monotonic()))
        if self.on_phase is not None:
            self.on_phase(phase)

    def seconds(self) -> tuple[tuple[str, float], ...]:
        ends = [t for _, t in self.started[1:]] + [time.monotonic()]
        return tuple(
            (phase, round(end - start, 2))
            for (phase, start), end in zip(self.started, ends, strict=True)
        )


# The libraries whose kernels and tokenization a reference log-probability comes out of.
_REFERENCE_LIBRARIES = ("torch", "transformers", "trl", "peft", "bitsandbytes", "tokenizers")


def reference_key(
    config: TrainingConfig, model_path: str, chat_template: str, *, compute: str
) -> str:
    """What a DPO reference log-probability depends on: the model's weights (by content),
    the reference's adapter (see TrainingConfig.reference), the precision it is loaded in,
    where and in what dtype it is computed (`compute`: device, kernel path and dtype; a
    kernel change alone moves the numbers), the library versions, the chat template and the
    truncation length."""
    adapter = reference_adapter(config)
    adapter_hash = file_sha256(Path(adapter) / ADAPTER_WEIGHTS_FILE) if adapter else ""
    weights = sorted(Path(model_path).glob("*.safetensors")) if Path(model_path).is_dir() else []
    identity = {
        "model": model_path,
        # A local model's weights by content: a replaced checkpoint is another key.
        "weights": [(w.name, file_sha256(w)) for w in weights],
        "adapter": adapter_hash,
        "quantize_4bit": config.quantize_4bit,
        "compute": compute,
        "libraries": {name: _version(name) for name in _REFERENCE_LIBRARIES},
        "template": hashlib.sha256((chat_template or "").encode()).hexdigest(),
        "max_length": config.max_length,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return ""


def sequence_tokens(examples: Sequence[PreferenceExample], max_length: int) -> int:
    """The longest prompt and response of the examples in tokens (what a batch pads to at
    worst), capped at `max_length`; counted on the characters for speed (about 3.5 a token)."""
    longest = max(
        sum(len(m["content"]) for m in e.prompt) + max(len(e.chosen), len(e.rejected))
        for e in examples
    )
    return min(max_length, int(longest / 3.5) + 32)  # 32: the chat template's own tokens


def memory_preflight(
    config: TrainingConfig,
    path: str,
    examples: Sequence[PreferenceExample],
    use_bf16: bool,
    *,
    on_cuda: bool = False,
) -> MemoryEstimate | None:
    """Refuse at once a run that cannot fit this machine, naming what to lower."""
    shape = model_shape(path)
    if shape is None:
        return None
    estimate = memory_estimate(
        shape=shape,
        method=config.method,
        batch_size=config.batch_size,
        tokens_per_sequence=sequence_tokens(examples, config.max_length),
        lora_r=config.lora_r,
        quantize_4bit=config.quantize_4bit,
        compute_bytes=2 if use_bf16 else 4,
        device="cuda" if on_cuda else "cpu",
        optimizer=config.optimizer,
    )
    available = memory_available_mb()
    if estimate.total_mb > 0.9 * available:
        raise MemoryError(
            f"{config.model} with batch_size {config.batch_size} and sequences of about "
            f"{estimate.tokens_per_sequence} tokens needs about "
            f"{estimate.total_mb / 1024:.1f} GB; this machine has {available / 1024:.1f} GB. "
            "Lower batch_size (raise gradient_accumulation_steps to keep the effective batch) "
            "or max_length."
        )
    return estimate


def out_of_memory_message(config: TrainingConfig, estimate: MemoryEstimate | None) -> str:
    guess = f" (estimated {estimate.total_mb / 1024:.1f} GB)" if estimate else ""
    return (
        f"Out of memory training {config.model} at batch_size {config.batch_size}, "
        f"max_length {config.max_length}{guess}. Lower batch_size (raise "
        "gradient_accumulation_steps to keep the effective batch) or max_length."
    )


def reference_adapter(config: TrainingConfig) -> str | None:
    """The adapter of the reference policy; None for the base model alone."""
    if config.reference == "start":
        return config.init_adapter
    if config.reference == "base":
        return None
    return config.reference
