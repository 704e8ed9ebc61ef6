"""Preference training: (Q)LoRA DPO and its sibling losses with TRL."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from alignment.engine.allocator import malloc_tuned_for_tensors
from alignment.engine.checkpoints import (
    CHECKPOINTS_DIR,
    checkpoint_commit,
    checkpoint_latest,
    file_sha256,
    fingerprint_of,
    staging_clear,
    staging_dir,
)
from alignment.engine.generation import adapter_validate
from alignment.engine.memory import (
    MemoryEstimate,
    memory_available_mb,
    memory_estimate,
    model_shape,
)
from alignment.engine.sources import (
    cpu_bf16_fast,
    cuda_available,
    model_load,
    model_path_resolve,
    tokenizer_load,
    torch_threads_fit,
)
from alignment.engine.spec import LOSS_TYPES as LOSS_TYPES
from alignment.engine.spec import METHODS as METHODS
from alignment.engine.spec import Hyperparameters, hyperparameters_validate

if TYPE_CHECKING:
    from transformers import PreTrainedModel

ADAPTER_DIR_NAME = "adapter"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"

# The methods and their losses are defined with the hyperparameters (alignment.engine.spec);
# the names stay importable from here.
REFERENCE_FREE = ("orpo", "simpo")
REFERENCES = ("start", "base")  # or the path of an adapter directory
PAIR_KINDS = ("preference", "tie", "both_bad")


@dataclass(frozen=True)
class PreferenceExample:
    prompt: tuple[Mapping[str, str], ...]  # chat messages, ending with a user turn
    chosen: str
    rejected: str
    # "tie": both equally good, "both_bad": neither acceptable; only KTO trains on them (as
    # two desirable or two undesirable completions).
    kind: str = "preference"


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


# What a checkpoint does not depend on: where things are, and how often it is written.
_NOT_FINGERPRINTED = ("output_dir", "models_dir", "checkpoint_steps")


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


class RefLogpStore(Protocol):
    """Reference log-probabilities kept between runs: per example (by its position in the
    examples given to `train`), (chosen, rejected) summed log-probabilities under the
    reference named by `key` (the reference model, its adapter, the chat template and the
    truncation; see `reference_key`). `put` gets the positions TRL kept (it drops a pair
    whose prompt alone fills max_length)."""

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
    stopped_at_step: int | None = None  # when on_progress asked to stop (a cancelled run)
    memory_estimate_mb: int | None = None  # the pre-flight estimate (alignment.engine.memory)
    # The training pairs the trained policy disagrees with, most disagreeing first (none when
    # training stopped early).
    contradictions: tuple[Contradiction, ...] = ()
    resumed_from_step: int | None = None  # the checkpoint this training continued from
    # Newer checkpoints passed over on resume, each with the reason (incomplete, bad hash).
    checkpoints_skipped: tuple[str, ...] = ()


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
    the share whose implicit reward margin grew, i.e. log pi(chosen) - log pi(rejected) rose
    from the starting policy (DPO's implicit reward accuracy, the starting policy being the
    reference); `reward_margin`: its mean times beta."""

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
                "trains on ties and both-bad pairs"
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
    same reference. ``on_progress`` is called after every optimizer step. Raises ValueError
    for an invalid config or no examples.
    """
    training_config_validate(config)
    examples_validate(examples, config.method)
    if validation:
        examples_validate(validation)  # preferences only: a tie has no side to get right
    with malloc_tuned_for_tensors():
        return _train(config, examples, validation, ref_store, on_progress)


def reference_key(config: TrainingConfig, model_path: str, chat_template: str) -> str:
    """What a DPO reference log-probability depends on: the model and the reference's
    adapter (see TrainingConfig.reference), the precision it is loaded in, the chat template
    and the truncation length."""
    adapter = _reference_adapter(config)
    adapter_hash = file_sha256(Path(adapter) / ADAPTER_WEIGHTS_FILE) if adapter else ""
    weights = sorted(Path(model_path).glob("*.safetensors")) if Path(model_path).is_dir() else []
    identity = {
        "model": model_path,
        # A local model's weight files by name and size: a replaced checkpoint is another key.
        "weights": [(w.name, w.stat().st_size) for w in weights],
        "adapter": adapter_hash,
        "quantize_4bit": config.quantize_4bit,
        "template": hashlib.sha256((chat_template or "").encode()).hexdigest(),
        "max_length": config.max_length,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _train(
    config: TrainingConfig,
    examples: Sequence[PreferenceExample],
    validation: Sequence[PreferenceExample],
    ref_store: RefLogpStore | None,
    on_progress: ProgressCallback | None,
) -> TrainingResult:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, PeftModel, prepare_model_for_kbit_training
    from transformers import PrinterCallback, TrainerCallback, set_seed

    on_cuda = cuda_available()
    # bfloat16 on CPUs that have it natively: measured 1.5-2x faster steps than float32.
    use_bf16 = on_cuda or cpu_bf16_fast()
    set_seed(config.seed)  # LoRA weights are initialised before the Trainer seeds anything
    torch_threads_fit()
    path = model_path_resolve(source=config.model, models_dir=config.models_dir)
    tokenizer = tokenizer_load(path, trust_remote_code=config.trust_remote_code)
    # Training pads on the right; left padding is for generation.
    tokenizer.padding_side = "right"
    estimate = _memory_preflight(config, path, examples, use_bf16)
    model: Any = model_load(
        path,
        quantize_4bit=config.quantize_4bit,
        trust_remote_code=config.trust_remote_code,
        dtype=torch.bfloat16 if use_bf16 else torch.float32,
    )
    if config.quantize_4bit and on_cuda:
        # Upcasts the unquantized weights to float32 and turns on gradient checkpointing:
        # the usual QLoRA recipe on a GPU. On a CPU both only cost time (about 2x).
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    peft_config = None
    if config.init_adapter is not None:
        model = PeftModel.from_pretrained(model, config.init_adapter, is_trainable=True)
    else:
        peft_config = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )

    rows = (
        [row for example in examples for row in _unpaired_rows(example)]
        if config.method == "kto"
        else [_example_row(example) for example in examples]
    )
    if config.method == "dpo":
        for index, row in enumerate(rows):
            row[INDEX_COLUMN] = index  # which example a row of TRL's tokenized dataset is
    key = None
    reused = 0
    if config.method == "dpo" and ref_store is not None:
        key = reference_key(config, path, getattr(tokenizer, "chat_template", "") or "")
        stored = ref_store.get(key, len(examples))
        if all(value is not None for value in stored):
            for row, value in zip(rows, stored, strict=True):
                assert value is not None
                row["ref_chosen_logps"], row["ref_rejected_logps"] = value
            reused = len(rows)
    dataset = Dataset.from_list(rows)
    steps_per_epoch = math.ceil(
        math.ceil(len(rows) / config.batch_size) / config.gradient_accumulation_steps
    )
    total_steps = steps_per_epoch * config.epochs
    fingerprint = fingerprint_of(
        {
            "config": {
                k: v for k, v in dataclasses.asdict(config).items() if k not in _NOT_FINGERPRINTED
            },
            "examples": [dataclasses.asdict(e) for e in examples],
        }
    )
    staging_clear(config.output_dir)  # what a killed worker left half written
    scan = checkpoint_latest(config.output_dir, fingerprint=fingerprint)
    common: dict[str, Any] = {
        # The Trainer writes checkpoints here; checkpoint_commit moves each one into place.
        "output_dir": str(staging_dir(config.output_dir)),
        "beta": config.beta,
        "learning_rate": config.learning_rate,
        "num_train_epochs": config.epochs,
        "per_device_train_batch_size": config.batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "max_length": config.max_length,
        "seed": config.seed,
        "logging_steps": 1,
        "save_strategy": "steps" if config.checkpoint_steps else "no",
        "save_steps": config.checkpoint_steps or 500,
        "report_to": "none",
        "use_cpu": not on_cuda,
        "bf16": use_bf16,
        "gradient_checkpointing": on_cuda,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "include_num_input_tokens_seen": "all",
    }
    if key is not None:
        common["precompute_ref_log_probs"] = True  # once for every epoch, then kept
    trainer_class, args = _method_trainer(config, common)
    started = time.monotonic()
    history: list[TrainingProgress] = []

    stopped: list[int] = []
    checkpointed: list[int] = [scan.latest.step] if scan.latest else []
    # Where this attempt began (a resumed one starts at its checkpoint): the pace and the
    # ETA count from there.
    begun = {"step": 0, "tokens": 0}

    class StepReporter(TrainerCallback):  # type: ignore[misc]
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            begun["step"] = int(state.global_step)
            begun["tokens"] = int(getattr(state, "num_input_tokens_seen", 0) or 0)

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            step = int(state.global_step)
            staged = Path(args.output_dir) / f"checkpoint-{step}"
            if staged.is_dir():
                # The pickled TrainingArguments: informational, never loaded; not kept.
                (staged / "training_args.bin").unlink(missing_ok=True)
                checkpoint_commit(staged, config.output_dir, step=step, fingerprint=fingerprint)
                checkpointed.append(step)

        def on_log(
            self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any
        ) -> Any:
            if not logs or "loss" not in logs:
                return None  # the end-of-training summary, not a step
            elapsed = time.monotonic() - started
            step = int(state.global_step)
            total = int(state.max_steps or total_steps)
            tokens = (getattr(state, "num_input_tokens_seen", 0) or 0) - begun["tokens"]
            done = step - begun["step"]
            progress = TrainingProgress(
                step=step,
                total_steps=total,
                epoch=float(state.epoch or 0.0),
                loss=_float_or_none(logs.get("loss")),
                reward_accuracy=_float_or_none(logs.get("rewards/accuracies")),
                reward_margin=_float_or_none(logs.get("rewards/margins")),
                chosen_reward=_float_or_none(logs.get("rewards/chosen")),
                rejected_reward=_float_or_none(logs.get("rewards/rejected")),
                elapsed_s=elapsed,
                chosen_logp=_float_or_none(logs.get("logps/chosen")),
                rejected_logp=_float_or_none(logs.get("logps/rejected")),
                tokens_per_s=tokens / elapsed if tokens and elapsed > 0 else None,
                memory_mb=_peak_memory_mb(on_cuda),
                eta_s=elapsed / done * (total - step) if done > 0 else None,
                checkpoint_step=checkpointed[-1] if checkpointed else None,
            )
            history.append(progress)
            if on_progress is not None and on_progress(progress):
                stopped.append(step)
                control.should_training_stop = True
            return control

    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[StepReporter()],
    )
    _reference_prepare(trainer.model, config)
    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts; on_progress reports
    if not on_cuda:
        # TRL casts QLoRA adapter weights to bf16 (the paper's GPU recipe). On a CPU the
        # adapter is tiny, and float32 weights under autocast keep the optimizer updates
        # exact at no measurable cost.
        assert trainer.model is not None
        for param in trainer.model.parameters():
            if param.requires_grad:
                param.data = param.data.to(torch.float32)
    if key is not None and not reused:
        assert ref_store is not None
        ref_store.put(key, _reference_logps(trainer.train_dataset))
    assert trainer.model is not None
    trainer.model.train()  # score as the steps compute (see completion_logps)
    before = _pair_logps(trainer.model, tokenizer, validation, config.max_length)
    resume = str(scan.latest.path) if scan.latest else None
    try:
        output = trainer.train(resume_from_checkpoint=resume)
    except (torch.OutOfMemoryError, MemoryError) as error:
        raise MemoryError(_out_of_memory_message(config, estimate)) from error
    except RuntimeError as error:  # the CPU allocator's "can't allocate memory"
        if "allocate" not in str(error) and "out of memory" not in str(error).lower():
            raise
        raise MemoryError(_out_of_memory_message(config, estimate)) from error
    trainer.model.train()
    after = _pair_logps(trainer.model, tokenizer, validation, config.max_length)
    if stopped:
        contradictions: tuple[Contradiction, ...] = ()
    elif key is not None:  # DPO with its reference log-probabilities at hand: one pass
        contradictions = _dpo_contradictions(trainer, config.beta)
    else:
        contradictions = _contradictions(trainer.model, tokenizer, examples, config)
    adapter_dir = _adapter_save(cast("PreTrainedModel", trainer.model), Path(config.output_dir))
    staging_clear(config.output_dir)
    if not stopped:  # finished: nothing left to resume; a cancelled run keeps its checkpoints
        shutil.rmtree(Path(config.output_dir) / CHECKPOINTS_DIR, ignore_errors=True)
    weights = adapter_dir / ADAPTER_WEIGHTS_FILE
    return TrainingResult(
        adapter_dir=str(adapter_dir),
        adapter_sha256=file_sha256(weights),
        steps=int(output.global_step),
        train_loss=float(output.training_loss),
        elapsed_s=time.monotonic() - started,
        history=tuple(history),
        validation=_validation_figures(before, after, config.beta) if validation else None,
        reference_key=key,
        ref_logps_reused=reused,
        stopped_at_step=stopped[0] if stopped else None,
        memory_estimate_mb=round(estimate.total_mb) if estimate else None,
        contradictions=contradictions,
        resumed_from_step=scan.latest.step if scan.latest else None,
        checkpoints_skipped=scan.skipped,
    )


def sequence_tokens(examples: Sequence[PreferenceExample], max_length: int) -> int:
    """The longest prompt and response of the examples in tokens (what a batch pads to at
    worst), capped at `max_length`; counted on the characters for speed (about 3.5 a token)."""
    longest = max(
        sum(len(m["content"]) for m in e.prompt) + max(len(e.chosen), len(e.rejected))
        for e in examples
    )
    return min(max_length, int(longest / 3.5) + 32)  # 32: the chat template's own tokens


def _memory_preflight(
    config: TrainingConfig, path: str, examples: Sequence[PreferenceExample], use_bf16: bool
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


def _out_of_memory_message(config: TrainingConfig, estimate: MemoryEstimate | None) -> str:
    guess = f" (estimated {estimate.total_mb / 1024:.1f} GB)" if estimate else ""
    return (
        f"Out of memory training {config.model} at batch_size {config.batch_size}, "
        f"max_length {config.max_length}{guess}. Lower batch_size (raise "
        "gradient_accumulation_steps to keep the effective batch) or max_length."
    )


# Per pair: (chosen log-prob, chosen tokens, rejected log-prob, rejected tokens).
PairLogps = list[tuple[float, int, float, int]]
INDEX_COLUMN = "prefloop_index"  # a DPO row's example index, kept through TRL's tokenization
SCORE_BATCH = 8  # sequences per forward pass when scoring pairs


def _pair_logps(
    model: Any,
    tokenizer: Any,
    examples: Sequence[PreferenceExample],
    max_length: int,
    batch_size: int = SCORE_BATCH,
) -> PairLogps:
    """Each pair's summed completion log-probabilities under `model`, with the completions'
    token counts: (chosen, n_chosen, rejected, n_rejected) per pair."""
    items = [
        (example.prompt, completion)
        for example in examples
        for completion in (example.chosen, example.rejected)
    ]
    sums = completion_logps(model, tokenizer, items, max_length, batch_size)
    return [(*sums[2 * k], *sums[2 * k + 1]) for k in range(len(examples))]


def completion_logps(
    model: Any,
    tokenizer: Any,
    items: Sequence[tuple[Sequence[Mapping[str, str]], str]],
    max_length: int,
    batch_size: int = SCORE_BATCH,
) -> list[tuple[float, int]]:
    """Per (prompt messages, completion): the completion's summed log-probability under
    `model`, in the mode it is in, and its token count, as the chat template lays them out.
    Scored in right-padded batches of similar length. A trainer's model scores in train mode
    (its dropout is off): bitsandbytes' 4-bit CPU layers compute differently in eval mode."""
    if not items:
        return []
    import torch

    sequences = [
        _completion_tokens(
            tokenizer,
            [{"role": m["role"], "content": m["content"]} for m in prompt],
            text,
            max_length,
        )
        for prompt, text in items
    ]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    sums: list[tuple[float, int]] = [(0.0, 1)] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]))
    with torch.no_grad():
        for offset in range(0, len(order), batch_size):
            batch = order[offset : offset + batch_size]
            width = max(len(sequences[i][0]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long, device=device)
            mask = torch.zeros((len(batch), width), dtype=torch.long, device=device)
            for row, i in enumerate(batch):
                tokens = sequences[i][0]
                ids[row, : len(tokens)] = torch.tensor(tokens, device=device)
                mask[row, : len(tokens)] = 1
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            logps = torch.log_softmax(logits, dim=-1).gather(2, ids[:, 1:, None])[..., 0]
            for row, i in enumerate(batch):
                tokens, start = sequences[i]
                # logps[t] is the log-probability of token t + 1.
                taken = logps[row, max(start - 1, 0) : len(tokens) - 1]
                sums[i] = (float(taken.sum()), max(int(taken.numel()), 1))
    return sums


def _reference_logps(dataset: Any) -> dict[int, tuple[float, float]]:
    """The reference log-probabilities TRL put on its tokenized DPO dataset, by example index
    (TRL drops a pair whose prompt alone fills max_length)."""
    return {
        int(i): (float(c), float(r))
        for i, c, r in zip(
            dataset[INDEX_COLUMN],
            dataset["ref_chosen_logps"],
            dataset["ref_rejected_logps"],
            strict=True,
        )
    }


@contextlib.contextmanager
def _train_mode(model: Any) -> Iterator[None]:
    """`model` in train mode for the block, as the training steps run it (TRL turns dropout
    off), then back in the mode it was in."""
    was_training = model.training
    model.train()
    try:
        yield
    finally:
        model.train(was_training)


def _dpo_contradictions(trainer: Any, beta: float) -> tuple[Contradiction, ...]:
    """DPO's contradictions from the reference log-probabilities TRL used and one pass of
    the trained policy over the same tokens."""
    reference = _reference_logps(trainer.train_dataset)
    policy = trainer.policy_logps()
    found = []
    for index, (pc, pr) in sorted(policy.items()):
        rc, rr = reference[index]
        margin = beta * ((pc - rc) - (pr - rr))
        if margin < 0:
            found.append(Contradiction(index=index, margin=margin))
    return tuple(sorted(found, key=lambda c: c.margin))


def _contradictions(
    model: Any, tokenizer: Any, examples: Sequence[PreferenceExample], config: TrainingConfig
) -> tuple[Contradiction, ...]:
    """The preference pairs the trained `model` ranks the other way round (see Contradiction)."""
    indices = [i for i, example in enumerate(examples) if example.kind == "preference"]
    pairs = [examples[i] for i in indices]
    policy = _pair_logps(model, tokenizer, pairs, config.max_length)
    if config.method in REFERENCE_FREE:
        margins = [c / nc - r / nr for c, nc, r, nr in policy]
    else:
        from trl.trainer.utils import use_adapter

        # TRL's reference: the "ref" adapter when there is one, else no adapter (the base).
        name = "ref" if "ref" in getattr(model, "peft_config", {}) else None
        with use_adapter(model, adapter_name=name):
            reference = _pair_logps(model, tokenizer, pairs, config.max_length)
        margins = [
            config.beta * ((pc - rc) - (pr - rr))
            for (pc, _, pr, _), (rc, _, rr, _) in zip(policy, reference, strict=True)
        ]
    found = [
        Contradiction(index=i, margin=m) for i, m in zip(indices, margins, strict=True) if m < 0
    ]
    return tuple(sorted(found, key=lambda c: c.margin))


def _completion_tokens(
    tokenizer: Any, prompt: list[dict[str, str]], completion: str, max_length: int
) -> tuple[list[int], int]:
    head = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    whole = tokenizer.apply_chat_template(
        [*prompt, {"role": "assistant", "content": completion}], tokenize=False
    )
    head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    ids = tokenizer(whole, add_special_tokens=False)["input_ids"][:max_length]
    return ids, min(len(head_ids), len(ids) - 1)


def _validation_figures(before: PairLogps, after: PairLogps, beta: float) -> ValidationFigures:
    def prefers_chosen(row: tuple[float, int, float, int]) -> bool:
        chosen, chosen_n, rejected, rejected_n = row
        return chosen / chosen_n > rejected / rejected_n

    growth = [(a[0] - a[2]) - (b[0] - b[2]) for a, b in zip(after, before, strict=True)]
    n = len(before)
    return ValidationFigures(
        pairs=n,
        accuracy_before=sum(map(prefers_chosen, before)) / n,
        accuracy_after=sum(map(prefers_chosen, after)) / n,
        reward_accuracy=sum(1 for g in growth if g > 0) / n,
        reward_margin=beta * sum(growth) / n,
    )


def _method_trainer(config: TrainingConfig, common: dict[str, Any]) -> tuple[Any, Any]:
    """The TRL trainer class of the method and its arguments."""
    if config.method == "kto":
        from trl import KTOConfig, KTOTrainer

        return KTOTrainer, KTOConfig(
            desirable_weight=config.desirable_weight,
            undesirable_weight=config.undesirable_weight,
            **common,
        )
    if config.method == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOTrainer, ORPOConfig(**common)
    if config.method == "simpo":
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        # SimPO is CPO's "simpo" loss without its behaviour-cloning term (cpo_alpha 0).
        return CPOTrainer, CPOConfig(
            loss_type="simpo", cpo_alpha=0.0, simpo_gamma=config.simpo_gamma, **common
        )
    from trl import DPOConfig, DPOTrainer

    class StoredRefDPOTrainer(DPOTrainer):  # type: ignore[misc]
        """Takes reference log-probabilities the dataset already carries (from a RefLogpStore)
        instead of computing them again."""

        def _precompute_ref_logps(self, dataset: Any, name: str, batch_size: int) -> Any:
            if "ref_chosen_logps" in dataset.column_names:
                return dataset
            _reference_prepare(self.model, config)  # runs inside __init__, so set it up now
            # In train mode, as the steps will run: from_pretrained leaves the model in eval
            # mode, where bitsandbytes' 4-bit CPU layers take another kernel with other
            # numbers, and the reference would not match the policy it starts from.
            with _train_mode(self.model):
                return super()._precompute_ref_logps(dataset, name, batch_size)

        def policy_logps(self) -> dict[int, tuple[float, float]]:
            """The trained policy's summed log-probabilities of every training pair, by
            example index, computed as TRL computed the reference's (same tokens, same
            truncation): with `ref_model` set, `compute_ref_log_probs` leaves the adapters
            as they are."""
            import torch
            from torch.utils.data import DataLoader

            dataset: Any = self.train_dataset
            model: Any = self.model
            indices = [int(i) for i in dataset[INDEX_COLUMN]]
            loader = DataLoader(
                self._remove_unused_columns(dataset, description="scoring"),
                batch_size=self.args.per_device_train_batch_size,
                collate_fn=self.data_collator,
                shuffle=False,
            )
            saved, self.ref_model = self.ref_model, model
            found: list[tuple[float, float]] = []
            try:
                with _train_mode(model), torch.no_grad():
                    for batch in loader:
                        batch = self._prepare_inputs(batch)
                        chosen, rejected = self.compute_ref_log_probs(model, batch)
                        found.extend(zip(chosen.tolist(), rejected.tolist(), strict=True))
            finally:
                self.ref_model = saved
            return dict(zip(indices, found, strict=True))

    losses, weights = [config.loss_type], [1.0]
    if config.sft_weight > 0:
        losses.append("sft")
        weights.append(config.sft_weight)
    return StoredRefDPOTrainer, DPOConfig(
        loss_type=losses,
        loss_weights=weights if len(losses) > 1 else None,
        label_smoothing=config.label_smoothing,
        **common,
    )


def _reference_adapter(config: TrainingConfig) -> str | None:
    """The adapter of the reference policy; None for the base model alone."""
    if config.reference == "start":
        return config.init_adapter
    if config.reference == "base":
        return None
    return config.reference


def _reference_prepare(model: Any, config: TrainingConfig) -> None:
    """Make the PEFT model's "ref" adapter the reference asked for. TRL computes reference
    log-probabilities with the "ref" adapter when there is one (a copy of the adapter
    training continues from), else with every adapter disabled (the base). Idempotent."""
    if config.reference == "start" or not hasattr(model, "peft_config"):
        return
    if config.reference == "base":
        if "ref" in model.peft_config:
            model.delete_adapter("ref")
        return
    if getattr(model, "prefloop_reference", None) == config.reference:
        return
    if "ref" in model.peft_config:
        model.delete_adapter("ref")
    adapter_validate(config.reference, sha256=config.reference_sha256)  # just before loading
    model.load_adapter(config.reference, adapter_name="ref", is_trainable=False)
    model.prefloop_reference = config.reference


def _unpaired_rows(example: PreferenceExample) -> list[dict[str, Any]]:
    """KTO's rows of a pair: its chosen response desirable and its rejected one not; a tie's
    two desirable, a both-bad pair's two undesirable."""
    prompt = [{"role": m["role"], "content": m["content"]} for m in example.prompt]
    first = example.kind != "both_bad"
    second = example.kind == "tie"
    return [
        {
            "prompt": prompt,
            "completion": [{"role": "assistant", "content": example.chosen}],
            "label": first,
        },
        {
            "prompt": prompt,
            "completion": [{"role": "assistant", "content": example.rejected}],
            "label": second,
        },
    ]


def _example_row(example: PreferenceExample) -> dict[str, Any]:
    return {
        "prompt": [{"role": m["role"], "content": m["content"]} for m in example.prompt],
        "chosen": [{"role": "assistant", "content": example.chosen}],
        "rejected": [{"role": "assistant", "content": example.rejected}],
    }


def _peak_memory_mb(on_cuda: bool) -> float:
    if on_cuda:
        import torch

        return float(torch.cuda.max_memory_allocated()) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _float_or_none(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def _adapter_save(model: PreTrainedModel, output_dir: Path) -> Path:
    """Write the trained adapter to ``output_dir/adapter`` so it appears complete or not at all."""
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / ADAPTER_DIR_NAME
    tmp = Path(tempfile.mkdtemp(dir=output_dir, prefix=f".{ADAPTER_DIR_NAME}.tmp-"))
    try:
        # Only "default": TRL adds a frozen "ref" copy when continuing an adapter.
        model.save_pretrained(str(tmp), selected_adapters=["default"], safe_serialization=True)
        os.chmod(tmp, 0o755)
        if target.exists():
            old = Path(tempfile.mkdtemp(dir=output_dir, prefix=f".{ADAPTER_DIR_NAME}.old-"))
            os.rename(target, old / ADAPTER_DIR_NAME)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
