"""A leaner fused LM head for TRL's DPO: log-probabilities of the completion tokens only.

TRL's DPOTrainer patches the model so that `model(..., labels=..., fused_lm_head=True)`
returns per-token log-probabilities without materializing the (batch, length, vocabulary)
logits (trl.trainer.utils.add_fused_lm_head). Off Triton devices (a CPU) that head scores
every position, the prompt's and the padding's too, in tiles of 4,096 positions by 32,768
vocabulary entries, and computes the entropy, the mean logit and the top-1 flag of each
position for its logged metrics. This head runs the same kernel (trl.kernels.
ChunkedLogProbFunction) on the labelled positions only, in smaller tiles of positions, and
computes the log-probabilities alone: the three metric fields come back as zeros (Prefloop
reports none of them: alignment.engine.training_run._StepReporter).

It also keeps the last training forward's summed log-probabilities per sequence
(`last_logps`; a no-grad reference forward leaves them), which
alignment.engine.trainers reads to learn the policy's log-probabilities of the training
pairs during the last epoch without another pass.

Models whose head is not a plain projection (soft-capped or scaled logits, a multimodal
text config) keep TRL's head.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from trl.kernels import ChunkedLogProbFunction
from trl.trainer.utils import FusedCausalLMOutput

# Tiles of positions by vocabulary entries. TRL's kernel takes 4,096 positions a tile: on a
# CPU each tile's float32 temporaries are then 128 KB a position (about 1 GB for a batch of 8
# sequences of 250 tokens). The head hands it 256 positions at a time instead: 32 MB a
# temporary. Each position's numbers are the same whatever tile it is in, so the gradients
# are TRL's to the bit. The vocabulary tile stays TRL's: a narrower one sums the bf16
# gradient in more parts (the adapter's gradients moved by 1.6 % against 0.9 % for TRL's,
# both measured against the plain full-logits head). Measured: bench/train_vs_trl.py.
POSITIONS_TILE = 256
VOCABULARY_TILE = 32768

_SCALING_FIELDS = (
    "final_logit_softcapping",
    "logit_scale",
    "output_multiplier",
    "lm_head_multiplier",
    "logits_scaling",
)


def lean_head_applies(model: Any) -> bool:
    """Whether `model`'s logits are the plain projection of its last hidden state."""
    config = model.config
    text_config = config.get_text_config()
    if text_config is not config:
        return False
    return all(getattr(text_config, name, None) in (None, 1, 1.0) for name in _SCALING_FIELDS)


def lean_head_add(model: Any) -> bool:
    """Replace the fused head TRL put on `model` (the base model, under PEFT) with the lean
    one. Idempotent; returns False (and leaves TRL's head) where it does not apply."""
    if getattr(model, "prefloop_lean_head", False):
        return True
    if not lean_head_applies(model):
        return False
    trl_forward = model.forward

    def forward(
        self: Any,
        *args: Any,
        fused_lm_head: bool = False,
        labels: torch.Tensor | None = None,
        shift_labels: torch.Tensor | None = None,
        num_items_in_batch: Any = None,
        **kwargs: Any,
    ) -> Any:
        if not fused_lm_head or labels is None or shift_labels is not None:
            return trl_forward(
                *args,
                fused_lm_head=fused_lm_head,
                labels=labels,
                shift_labels=shift_labels,
                num_items_in_batch=num_items_in_batch,
                **kwargs,
            )
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        head = self.get_output_embeddings()
        labels = labels[:, 1:].to(head.weight.device)
        mask = labels != -100
        rows, targets = hidden.to(head.weight.device)[mask], labels[mask]
        log_probs = torch.cat(
            [
                ChunkedLogProbFunction.apply(
                    rows[start : start + POSITIONS_TILE],
                    head.weight,
                    head.bias,
                    targets[start : start + POSITIONS_TILE],
                    1.0,  # temperature
                    VOCABULARY_TILE,
                    None,  # no soft-capping (lean_head_applies)
                    1.0,  # logit scale
                    (),  # log-probabilities only
                )[0]
                for start in range(0, max(len(rows), 1), POSITIONS_TILE)
            ]
        )
        # masked_scatter keeps the result connected to the graph even with no label.
        per_token = log_probs.new_zeros(mask.shape).masked_scatter(mask, log_probs)
        if torch.is_grad_enabled():  # the policy's training forward, not a reference pass
            self.last_logps = per_token.detach().sum(dim=1)
        zeros = torch.zeros_like(per_token, requires_grad=False)
        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(
            loss=-per_token.sum() / count,
            log_probs=per_token,
            entropy=zeros,
            mean_logits=zeros,
            is_top1=zeros.bool(),
            label_mask=mask,
        )

    model.forward = types.MethodType(forward, model)
    model.prefloop_lean_head = True
    return True
