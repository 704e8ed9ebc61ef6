"""One training run, as `alignment.engine.training.train` starts it: the model and adapter
prepared, the rows and the stored reference log-probabilities, TRL's trainer with a step
reporter and atomic checkpoints, the held-out scores and contradictions, the saved adapter.
Imports torch, transformers and TRL: load it lazily."""

from __future__ import annotations

import dataclasses
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel
from peft.helpers import disable_input_dtype_casting
from transformers import PreTrainedModel, PrinterCallback, TrainerCallback, set_seed

from alignment.engine.checkpoints import (
    CHECKPOINTS_DIR,
    checkpoint_commit,
    checkpoint_latest,
    file_sha256,
    fingerprint_of,
    staging_clear,
    staging_dir,
)
from alignment.engine.lean_head import VOCABULARY_TILE
from alignment.engine.memory import MemoryEstimate, peak_rss_mb
from alignment.engine.scoring import (
    INDEX_COLUMN,
    LENGTH_COLUMN,
    contradictions,
    dpo_contradictions,
    pair_logps,
    reference_logps,
    reference_pair_logps,
    validation_figures,
)
from alignment.engine.sources import (
    cpu_bf16_fast,
    cuda_available,
    model_load,
    model_path_resolve,
    tokenizer_load,
    torch_threads_fit,
)
from alignment.engine.spec import GPU_OPTIMIZERS
from alignment.engine.trainers import method_trainer, reference_prepare
from alignment.engine.training import (
    ADAPTER_DIR_NAME,
    ADAPTER_WEIGHTS_FILE,
    RATING_KINDS,
    REFERENCE_FREE,
    Contradiction,
    PhaseCallback,
    PreferenceExample,
    ProgressCallback,
    RefLogpStore,
    TrainingConfig,
    TrainingProgress,
    TrainingResult,
    memory_preflight,
    out_of_memory_message,
    reference_key,
)
from alignment.engine.turns import pair_ids

# What a checkpoint does not depend on: where things are, and how often it is written.
_NOT_FINGERPRINTED = ("output_dir", "models_dir", "checkpoint_steps")


def run(
    config: TrainingConfig,
    examples: Sequence[PreferenceExample],
    validation: Sequence[PreferenceExample],
    ref_store: RefLogpStore | None,
    on_progress: ProgressCallback | None,
    on_phase: PhaseCallback,
) -> TrainingResult:
    on_phase("loading the model")
    on_cuda = cuda_available()
    if config.optimizer in GPU_OPTIMIZERS and not on_cuda:
        raise ValueError(
            f"optimizer {config.optimizer} needs a CUDA GPU and this worker has none: "
            "choose adamw_torch_fused"
        )
    # bfloat16 on CPUs that have it natively: measured 1.5-2x faster steps than float32.
    use_bf16 = on_cuda or cpu_bf16_fast()
    set_seed(config.seed)  # LoRA weights are initialised before the Trainer seeds anything
    torch_threads_fit()
    path = model_path_resolve(source=config.model, models_dir=config.models_dir)
    tokenizer = tokenizer_load(path, trust_remote_code=config.trust_remote_code)
    # Training pads on the right; left padding is for generation.
    tokenizer.padding_side = "right"
    estimate = memory_preflight(config, path, examples, use_bf16, on_cuda=on_cuda)
    model, peft_config = _model_prepare(config, path, on_cuda=on_cuda, use_bf16=use_bf16)
    compute = _compute_identity(on_cuda=on_cuda, use_bf16=use_bf16)
    on_phase("laying out the pairs")
    rows, key, reused, dropped = _rows(config, examples, ref_store, path, tokenizer, compute)
    fingerprint = _fingerprint(config, examples)
    staging_clear(config.output_dir)  # what a killed worker left half written
    scan = checkpoint_latest(config.output_dir, fingerprint=fingerprint)
    trainer_class, args = method_trainer(
        config, _trainer_arguments(config, on_cuda=on_cuda, use_bf16=use_bf16, stored=key)
    )
    # KTO's rows hold every epoch already (_kto_rows): one pass over them.
    passes = 1 if config.method == "kto" else config.epochs
    steps_per_pass = math.ceil(
        math.ceil(len(rows) / config.batch_size) / config.gradient_accumulation_steps
    )
    reporter = _StepReporter(
        config=config,
        fingerprint=fingerprint,
        total_steps=steps_per_pass * passes,
        epochs_per_pass=config.epochs // passes,
        on_progress=on_progress,
        on_cuda=on_cuda,
        checkpointed=[scan.latest.step] if scan.latest else [],
    )
    if key is not None and reused < len(rows):
        on_phase("reference log-probabilities")  # TRL computes them as the trainer is built
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[reporter],
    )
    _trainer_prepare(trainer, config, on_cuda=on_cuda)
    if key is not None and reused < len(rows):
        assert ref_store is not None
        ref_store.put(key, reference_logps(trainer.train_dataset))
    trainer.model.train()  # score as the steps compute (see completion_logps)
    if validation:
        on_phase("scoring the validation pairs")
    before = pair_logps(trainer.model, tokenizer, validation, config.max_length)
    # The implicit reward is measured against the run's reference, the start unless asked.
    reference = (
        reference_pair_logps(trainer.model, tokenizer, validation, config.max_length)
        if config.reference != "start" and config.method not in REFERENCE_FREE
        else before
    )
    on_phase("training")
    output = _trainer_train(
        trainer, config, estimate, resume=str(scan.latest.path) if scan.latest else None
    )
    trainer.model.train()
    if validation:
        on_phase("scoring the validation pairs after training")
    after = pair_logps(trainer.model, tokenizer, validation, config.max_length)
    if not reporter.stopped:
        on_phase("checking the training pairs against the trained policy")
    found = () if reporter.stopped else _contradictions(trainer, tokenizer, examples, config, key)
    on_phase("saving the adapter")
    adapter_dir = _adapter_save(trainer.model, Path(config.output_dir))
    staging_clear(config.output_dir)
    if not reporter.stopped:  # finished: nothing left to resume; a cancelled run keeps them
        shutil.rmtree(Path(config.output_dir) / CHECKPOINTS_DIR, ignore_errors=True)
    return TrainingResult(
        adapter_dir=str(adapter_dir),
        adapter_sha256=file_sha256(adapter_dir / ADAPTER_WEIGHTS_FILE),
        steps=int(output.global_step),
        train_loss=float(output.training_loss),
        elapsed_s=time.monotonic() - reporter.started,
        history=tuple(reporter.history),
        validation=validation_figures(before, after, reference, config.beta)
        if validation
        else None,
        reference_key=key,
        ref_logps_reused=reused,
        examples_dropped=dropped,
        stopped_at_step=reporter.stopped[0] if reporter.stopped else None,
        memory_estimate_mb=round(estimate.total_mb) if estimate else None,
        contradictions=found,
        resumed_from_step=scan.latest.step if scan.latest else None,
        checkpoints_skipped=scan.skipped,
    )


def _fingerprint(config: TrainingConfig, examples: Sequence[PreferenceExample]) -> str:
    """What a checkpoint belongs to: the settings that shape training, and the examples."""
    return fingerprint_of(
        {
            "config": {
                k: v for k, v in dataclasses.asdict(config).items() if k not in _NOT_FINGERPRINTED
            },
            "examples": [dataclasses.asdict(e) for e in examples],
        }
    )


def _contradictions(
    trainer: Any,
    tokenizer: Any,
    examples: Sequence[PreferenceExample],
    config: TrainingConfig,
    key: str | None,
) -> tuple[Contradiction, ...]:
    if key is not None:  # DPO with its reference log-probabilities at hand: one pass
        return dpo_contradictions(trainer, config.beta)
    return contradictions(trainer.model, tokenizer, examples, config)


def _model_prepare(
    config: TrainingConfig, path: str, *, on_cuda: bool, use_bf16: bool
) -> tuple[Any, LoraConfig | None]:
    """The model to train, and the LoRA config of a fresh adapter (None when training
    continues `init_adapter`)."""
    model: Any = model_load(
        path,
        quantize_4bit=config.quantize_4bit,
        trust_remote_code=config.trust_remote_code,
        dtype=torch.bfloat16 if use_bf16 else torch.float32,
    )
    # No prepare_model_for_kbit_training: its float32 copy of the embeddings and norms would
    # add 2 GB to an 8B model with a 128k vocabulary; they train frozen in the compute dtype,
    # and the Trainer turns gradient checkpointing on (_trainer_arguments).
    if config.init_adapter is not None:
        return PeftModel.from_pretrained(model, config.init_adapter, is_trainable=True), None
    return model, LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def _rows(
    config: TrainingConfig,
    examples: Sequence[PreferenceExample],
    ref_store: RefLogpStore | None,
    path: str,
    tokenizer: Any,
    compute: str,
) -> tuple[list[dict[str, Any]], str | None, int, int]:
    """The trainer's rows, tokenized here (alignment.engine.turns) for every method; the
    reference key of DPO with a store, how many rows took their reference log-probabilities
    from it, and how many examples were left out because their prompt alone fills
    max_length (no completion token would be left to learn from)."""
    encoded = [
        (
            index,
            pair_ids(
                tokenizer,
                e.prompt,
                e.chosen,
                e.rejected,
                chosen_complete=e.chosen_complete,
                rejected_complete=e.rejected_complete,
            ),
        )
        for index, e in enumerate(examples)
    ]
    kept = [(index, ids) for index, ids in encoded if len(ids[0]) < config.max_length]
    if not kept:
        raise ValueError(
            f"every prompt fills max_length ({config.max_length} tokens): raise max_length"
        )
    dropped = len(examples) - len(kept)
    if config.method == "kto":
        return _kto_rows(config, examples, kept), None, 0, dropped
    rows: list[dict[str, Any]] = [
        {INDEX_COLUMN: index, "prompt_ids": p, "chosen_ids": c, "rejected_ids": r}
        for index, (p, c, r) in kept
    ]
    if config.method == "dpo":  # what a batch pads to (trainers.LengthGroupedSampler)
        for row in rows:
            row[LENGTH_COLUMN] = len(row["prompt_ids"]) + max(
                len(row["chosen_ids"]), len(row["rejected_ids"])
            )
    if config.method != "dpo" or ref_store is None:
        return rows, None, 0, dropped
    template = getattr(tokenizer, "chat_template", "") or ""
    key = reference_key(config, path, template, compute=compute)
    stored = ref_store.get(key, len(examples))
    reused = 0
    for row in rows:
        value = stored[row[INDEX_COLUMN]]
        # The ones not stored yet are computed (StoredRefDPOTrainer) and stored after.
        row["ref_chosen_logps"], row["ref_rejected_logps"] = value or (math.nan, math.nan)
        reused += value is not None
    return rows, key, reused, dropped


def _compute_identity(*, on_cuda: bool, use_bf16: bool) -> str:
    """Where the numbers come from: the device and the kernels torch picks on it, the dtype."""
    if on_cuda:
        device = f"cuda:{torch.cuda.get_device_name()}:{torch.version.cuda}"
    else:
        device = f"cpu:{torch.backends.cpu.get_cpu_capability()}"
    # The head's kernel path (alignment.engine.lean_head) shapes the numbers too.
    return f"{device}:{'bfloat16' if use_bf16 else 'float32'}:lean-head-{VOCABULARY_TILE}"


def _kto_rows(
    config: TrainingConfig,
    examples: Sequence[PreferenceExample],
    kept: Sequence[tuple[int, tuple[list[int], list[int], list[int]]]],
) -> list[dict[str, Any]]:
    """KTO's unpaired rows, one pass of a fresh seeded shuffle per epoch (trained as one long
    epoch: TRL pairs each row with its batch neighbour for the KL estimate, so it samples in
    order). Shuffled, a row's neighbour is another prompt's answer, as KTO's mismatched pairs
    need, not the other answer of its own pair."""
    unpaired = []
    for index, (prompt, chosen, rejected) in kept:
        kind = examples[index].kind
        if kind in RATING_KINDS:  # one response, rated desirable or not
            unpaired.append(
                {"prompt_ids": prompt, "completion_ids": chosen, "label": kind == "good"}
            )
            continue
        # A pair's chosen answer is desirable and its rejected one not; a tie's two are
        # desirable, a both-bad pair's two undesirable.
        for completion, label in ((chosen, kind != "both_bad"), (rejected, kind == "tie")):
            unpaired.append({"prompt_ids": prompt, "completion_ids": completion, "label": label})
    rng = random.Random(config.seed)
    rows: list[dict[str, Any]] = []
    for _ in range(config.epochs):
        order = list(range(len(unpaired)))
        rng.shuffle(order)
        rows.extend(unpaired[i] for i in order)
    return rows


def _trainer_arguments(
    config: TrainingConfig, *, on_cuda: bool, use_bf16: bool, stored: str | None
) -> dict[str, Any]:
    """The arguments every method's TRL config shares."""
    common: dict[str, Any] = {
        # The Trainer writes checkpoints here; checkpoint_commit moves each one into place.
        "output_dir": str(staging_dir(config.output_dir)),
        "beta": config.beta,
        "learning_rate": config.learning_rate,
        "num_train_epochs": 1 if config.method == "kto" else config.epochs,
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
        # Recompute each layer's activations in the backward pass instead of keeping them:
        # on a CPU too, where it holds peak memory to the weights and one layer's worth.
        "gradient_checkpointing": True,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "include_num_input_tokens_seen": "all",
        "optim": config.optimizer,
    }
    if stored is not None:
        common["precompute_ref_log_probs"] = True  # once for every epoch, then kept
        # No gradients are kept in the reference pass: on a GPU a batch 4 times the
        # training one fills it better; on a CPU a bigger batch only pads more.
        common["precompute_ref_batch_size"] = config.batch_size * (4 if on_cuda else 1)
    return common


def _trainer_prepare(trainer: Any, config: TrainingConfig, *, on_cuda: bool) -> None:
    reference_prepare(trainer.model, config)
    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts; on_progress reports
    if not on_cuda:
        # TRL casts QLoRA adapter weights to bf16 (the paper's GPU recipe). On a CPU the
        # adapter is tiny, and float32 weights under autocast keep the optimizer updates
        # exact at no measurable cost.
        for param in trainer.model.parameters():
            if param.requires_grad:
                param.data = param.data.to(torch.float32)


def _trainer_train(
    trainer: Any, config: TrainingConfig, estimate: MemoryEstimate | None, resume: str | None
) -> Any:
    """TRL's training, with running out of memory said in the lead's terms."""
    # PEFT's 4-bit LoRA layer casts its input to the adapter's dtype unless autocast is on,
    # and asks torch.is_autocast_enabled(), which answers for CUDA only: under the CPU's bf16
    # autocast each LoRA layer made a float32 copy of its input (kept for the backward pass)
    # that autocast then cast back to bf16 for the matmul. Without the cast the matmul is the
    # same bf16 one. (Outside autocast, the scoring before and after, the cast is needed.)
    cpu_autocast = bool(trainer.args.bf16) and not torch.cuda.is_available()
    try:
        with disable_input_dtype_casting(trainer.model, active=cpu_autocast):
            return trainer.train(resume_from_checkpoint=resume)
    except (torch.OutOfMemoryError, MemoryError) as error:
        raise MemoryError(out_of_memory_message(config, estimate)) from error
    except RuntimeError as error:  # the CPU allocator's "can't allocate memory"
        if "allocate" not in str(error) and "out of memory" not in str(error).lower():
            raise
        raise MemoryError(out_of_memory_message(config, estimate)) from error


@dataclass(eq=False)
class _StepReporter(TrainerCallback):
    """Reports each optimizer step to `on_progress` (which may stop the run) and moves each
    checkpoint the Trainer writes into place atomically."""

    config: TrainingConfig
    fingerprint: str
    total_steps: int
    on_progress: ProgressCallback | None
    on_cuda: bool
    checkpointed: list[int]  # the steps of the complete checkpoints, oldest first
    epochs_per_pass: int = 1  # KTO trains every epoch in one pass over its rows
    started: float = field(default_factory=time.monotonic)
    history: list[TrainingProgress] = field(default_factory=list)
    stopped: list[int] = field(default_factory=list)  # the step a cancel stopped after
    # Where this attempt began (a resumed one starts at its checkpoint): the pace and the
    # ETA count from there.
    begun_step: int = 0
    begun_tokens: int = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self.begun_step = int(state.global_step)
        self.begun_tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        step = int(state.global_step)
        staged = Path(args.output_dir) / f"checkpoint-{step}"
        if staged.is_dir():
            # The pickled TrainingArguments: informational, never loaded; not kept.
            (staged / "training_args.bin").unlink(missing_ok=True)
            checkpoint_commit(
                staged, self.config.output_dir, step=step, fingerprint=self.fingerprint
            )
            self.checkpointed.append(step)

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> Any:
        if not logs or "loss" not in logs:
            return None  # the end-of-training summary, not a step
        elapsed = time.monotonic() - self.started
        step = int(state.global_step)
        total = int(state.max_steps or self.total_steps)
        tokens = (getattr(state, "num_input_tokens_seen", 0) or 0) - self.begun_tokens
        done = step - self.begun_step
        progress = TrainingProgress(
            step=step,
            total_steps=total,
            epoch=float(state.epoch or 0.0) * self.epochs_per_pass,
            loss=_float_or_none(logs.get("loss")),
            reward_accuracy=_float_or_none(logs.get("rewards/accuracies")),
            reward_margin=_float_or_none(logs.get("rewards/margins")),
            chosen_reward=_float_or_none(logs.get("rewards/chosen")),
            rejected_reward=_float_or_none(logs.get("rewards/rejected")),
            elapsed_s=elapsed,
            chosen_logp=_float_or_none(logs.get("logps/chosen")),
            rejected_logp=_float_or_none(logs.get("logps/rejected")),
            tokens_per_s=tokens / elapsed if tokens and elapsed > 0 else None,
            memory_mb=_peak_memory_mb(self.on_cuda),
            eta_s=elapsed / done * (total - step) if done > 0 else None,
            checkpoint_step=self.checkpointed[-1] if self.checkpointed else None,
        )
        self.history.append(progress)
        if self.on_progress is not None and self.on_progress(progress):
            self.stopped.append(step)
            control.should_training_stop = True
        return control


def _peak_memory_mb(on_cuda: bool) -> float:
    if on_cuda:
        import torch

        return float(torch.cuda.max_memory_allocated()) / 2**20
    return peak_rss_mb()


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
