"""How a prompt and a response are laid out in tokens, for training and for scoring: the chat
template's prompt with its generation prompt, then the response. A finished response closes
its turn as the template closes it (the end-of-turn token included); a response cut off at
the token limit does not, so training never teaches a model to stop where the limit cut it.

The one place the layout is made: the DPO, KTO, ORPO and SimPO rows and the held-out scores
all take their tokens from here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Messages = Sequence[Mapping[str, str]]


def prompt_text(tokenizer: Any, prompt: Messages) -> str:
    messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
    return str(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))


def prompt_ids(tokenizer: Any, prompt: Messages) -> list[int]:
    """The templated prompt's token ids, ready for the assistant's turn (one BOS at most:
    the template's own)."""
    return _ids(tokenizer, prompt_text(tokenizer, prompt))


def turn_ids(
    tokenizer: Any, prompt: Messages, completion: str, *, complete: bool = True
) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) of one response. Where the tokens of the prompt and of
    the whole differ at the seam (a template or a merge), the completion starts at the first
    difference."""
    head = prompt_text(tokenizer, prompt)
    if complete:
        messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
        whole = str(
            tokenizer.apply_chat_template(
                [*messages, {"role": "assistant", "content": completion}], tokenize=False
            )
        )
    else:  # what the model saw when the limit stopped it: the prompt, then its tokens
        whole = head + completion
    head_ids = _ids(tokenizer, head)
    ids = _ids(tokenizer, whole)
    start = _common_prefix(head_ids, ids)
    return ids[:start], ids[start:]


def pair_ids(
    tokenizer: Any,
    prompt: Messages,
    chosen: str,
    rejected: str,
    *,
    chosen_complete: bool = True,
    rejected_complete: bool = True,
) -> tuple[list[int], list[int], list[int]]:
    """(prompt, chosen, rejected) ids of a pair: one prompt for both completions."""
    chosen_prompt, chosen_ids = turn_ids(tokenizer, prompt, chosen, complete=chosen_complete)
    rejected_prompt, rejected_ids = turn_ids(
        tokenizer, prompt, rejected, complete=rejected_complete
    )
    start = min(len(chosen_prompt), len(rejected_prompt))
    return (
        chosen_prompt[:start],
        chosen_prompt[start:] + chosen_ids,
        rejected_prompt[start:] + rejected_ids,
    )


def _ids(tokenizer: Any, text: str) -> list[int]:
    # The template already holds the special tokens; adding them again doubles BOS.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
