"""The libraries' internals the engine relies on, in one place.

TRL, transformers and PEFT change their private methods between minor releases; the engine
overrides or calls the ones below. `pyproject.toml` pins each library to the minor release
these were written against, and `constraints.txt` pins the whole app to the versions tested.
tests/engine/test_internals.py checks every entry against the installed libraries (that it
exists with these parameters); the engine's behaviour through each is tested where it is used.
Before raising a pin, run those tests and read each entry's use.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Internal:
    target: str  # "module:qualified.name"
    parameters: tuple[str, ...]  # the parameters (or, for a dataclass, the fields) relied on
    use: str  # where and why


INTERNALS: tuple[Internal, ...] = (
    Internal(
        "trl:DPOTrainer._prepare_dataset",
        ("self", "dataset", "processing_class", "args", "dataset_name"),
        "trainers.StoredRefDPOTrainer: rows come tokenized by engine.turns (one template)",
    ),
    Internal(
        "trl:DPOTrainer._precompute_ref_logps",
        ("self", "dataset", "name", "batch_size"),
        "trainers.StoredRefDPOTrainer: compute only the reference log-probs not stored",
    ),
    Internal(
        "trl:DPOTrainer.compute_ref_log_probs",
        ("self", "model", "inputs"),
        "trainers.StoredRefDPOTrainer.policy_logps: the policy scored as the reference was",
    ),
    Internal(
        "trl:DPOTrainer._set_signature_columns_if_needed",
        ("self",),
        "trainers.StoredRefDPOTrainer: keep each row's example index in the batches",
    ),
    Internal(
        "trl:DPOTrainer.compute_loss",
        ("self", "model", "inputs", "return_outputs", "num_items_in_batch"),
        "trainers.StoredRefDPOTrainer: the last epoch's policy log-probs per pair",
    ),
    Internal(
        "transformers:Trainer._get_train_sampler",
        ("self", "train_dataset"),
        "trainers.StoredRefDPOTrainer: DPO batches of like length (LengthGroupedSampler)",
    ),
    Internal(
        "transformers.trainer_pt_utils:get_length_grouped_indices",
        ("lengths", "batch_size", "mega_batch_mult", "generator"),
        "trainers.LengthGroupedSampler: transformers' grouping, seeded by run and epoch",
    ),
    Internal(
        "transformers:Trainer._remove_unused_columns",
        ("self", "dataset", "description"),
        "trainers.StoredRefDPOTrainer.policy_logps: the batches TRL's collator takes",
    ),
    Internal(
        "transformers:Trainer._prepare_inputs",
        ("self", "inputs"),
        "trainers.StoredRefDPOTrainer.policy_logps: batches onto the device",
    ),
    Internal(
        "trl:KTOTrainer._prepare_dataset",
        ("self", "dataset", "processing_class", "args", "dataset_name"),
        "trainers.TokenizedKTOTrainer: tokenized rows, KL completions by batch neighbour",
    ),
    Internal(
        "trl.experimental.orpo:ORPOTrainer.tokenize_row",
        ("self", "feature", "model"),
        "trainers.TokenizedORPOTrainer: no second end-of-turn token",
    ),
    Internal(
        "trl.experimental.cpo:CPOTrainer.tokenize_row",
        ("self", "feature", "model"),
        "trainers.TokenizedCPOTrainer (SimPO): no second end-of-turn token",
    ),
    Internal(
        "trl.kernels:ChunkedLogProbFunction.forward",
        (
            "ctx",
            "hidden",
            "weight",
            "bias",
            "targets",
            "temperature",
            "chunk_size",
            "final_logit_softcapping",
            "logit_scale",
            "outputs",
        ),
        "lean_head: the chunked log-probability kernel, on the labelled positions only",
    ),
    Internal(
        "trl.trainer.utils:FusedCausalLMOutput",
        ("loss", "log_probs", "entropy", "mean_logits", "is_top1", "label_mask"),
        "lean_head: what DPOTrainer._compute_loss reads of a fused forward",
    ),
    Internal(
        "trl.trainer.utils:add_fused_lm_head",
        ("model", "temperature", "cast_lm_head_to_fp32", "outputs"),
        "lean_head: the head it replaces, and its fused_lm_head=True calling convention",
    ),
    Internal(
        "trl.trainer.utils:use_adapter",
        ("model", "adapter_name"),
        "scoring.reference_pair_logps: the reference as TRL takes it",
    ),
    Internal(
        "peft.helpers:disable_input_dtype_casting",
        ("model", "active"),
        "training_run._trainer_train: no float32 copy of LoRA inputs under CPU autocast",
    ),
)
