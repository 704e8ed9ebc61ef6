"""Model judges: which of two responses a judge prefers, asked twice with the sides swapped.

Three kinds behind one protocol (`Asker.ask(JudgeAsk) -> Answer`, in terms of the first and
second response shown): a rule (engine.rules), an LLM behind an OpenAI-compatible
chat-completions endpoint (vLLM, a llama.cpp server, a hosted provider), and a local causal
LM that answers by its logits for each answer token. `judge_pair` asks twice, the second time
with the responses swapped, and keeps a preference only when both asks agree: a judge that
prefers a position rather than a response is *uncertain* on that pair. A judge that also
gives a margin (the local model: its logit for "A" minus its logit for "B") is judged by the
margins instead: a position bias adds the same amount to both asks' margins, so half their
difference is the preference with the bias cancelled, and its sign is the verdict.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from alignment.engine.rules import JudgeRule

Message = Mapping[str, str]
Position = Literal["first", "second", "tie"]
Verdict = Literal["a", "b", "tie"]

# What the judge is asked to answer with; the answer is read from its last line that holds one.
ANSWERS = {"A": "first", "B": "second", "TIE": "tie"}
_ANSWER = re.compile(r"(?<![A-Za-z])(TIE|A|B)(?![A-Za-z])", re.IGNORECASE)
# A reply longer than this is not an answer (a judge asked for one word that writes an essay).
MAX_ANSWER_CHARS = 2000


class JudgeFailed(Exception):
    """No answer to this ask: the endpoint failed after its retries, timed out, or answered
    something that is not a verdict. The message says which; the pair gets no judgment."""


class JudgeUnusable(Exception):
    """The judge cannot work at all (no API key, an endpoint that refuses the request): stop
    asking."""


@dataclass(frozen=True)
class JudgeAsk:
    guidelines: str  # the project's current guidelines, markdown
    prompt: Sequence[Message]  # the chat the responses answer
    first: str  # shown as Response A
    second: str  # shown as Response B


@dataclass(frozen=True)
class Answer:
    position: Position
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # How much more the judge favours the first response than the second (log-odds), where
    # it can say; None for a judge that only names one.
    margin: float | None = None


class Asker(Protocol):
    def ask(self, ask: JudgeAsk) -> Answer: ...


@dataclass(frozen=True)
class PairVerdict:
    """A pair judged twice. `verdict` is None when the two asks disagree (uncertain), or, for
    a judge with margins, when the debiased margin is exactly zero."""

    verdict: Verdict | None
    asked: Verdict  # the first ask (a shown first), in terms of a/b
    swapped: Verdict  # the second ask (b shown first), in terms of a/b
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    margin: float | None = None  # a over b with the position bias cancelled, where known

    @property
    def consistent(self) -> bool:
        return self.asked == self.swapped


def judge_pair(
    asker: Asker, *, guidelines: str, prompt: Sequence[Message], a: str, b: str
) -> PairVerdict:
    """Ask with `a` shown first, then with `b` shown first; agreeing asks give the verdict."""
    started = time.monotonic()
    one = asker.ask(JudgeAsk(guidelines=guidelines, prompt=prompt, first=a, second=b))
    two = asker.ask(JudgeAsk(guidelines=guidelines, prompt=prompt, first=b, second=a))
    asked: Verdict = {"first": "a", "second": "b", "tie": "tie"}[one.position]  # type: ignore[assignment]
    swapped: Verdict = {"first": "b", "second": "a", "tie": "tie"}[two.position]  # type: ignore[assignment]
    verdict: Verdict | None = asked if asked == swapped else None
    margin = None
    if one.margin is not None and two.margin is not None:
        # one.margin = preference + bias, two.margin = -preference + bias.
        margin = (one.margin - two.margin) / 2
        verdict = "a" if margin > 0 else "b" if margin < 0 else None
    return PairVerdict(
        verdict=verdict,
        asked=asked,
        swapped=swapped,
        prompt_tokens=one.prompt_tokens + two.prompt_tokens,
        completion_tokens=one.completion_tokens + two.completion_tokens,
        seconds=time.monotonic() - started,
        margin=margin,
    )


def judge_messages(ask: JudgeAsk) -> list[dict[str, str]]:
    """The chat a model judge is asked: the guidelines as the system turn, then the
    conversation and the two responses, and the answer wanted."""
    conversation = "\n\n".join(
        f"[{m.get('role', 'user')}]\n{m.get('content', '')}" for m in ask.prompt
    )
    system = (
        "You compare two responses of an AI assistant to the same conversation, following "
        "these guidelines:\n\n" + (ask.guidelines.strip() or "Prefer the more helpful response.")
    )
    user = (
        f"Conversation:\n{conversation}\n\n"
        f"Response A:\n{ask.first}\n\n"
        f"Response B:\n{ask.second}\n\n"
        "Which response is better under the guidelines? Answer with one word: A, B, or TIE."
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def answer_read(text: str) -> Position:
    """The verdict in a judge's reply: A, B or TIE, alone or ending its last line that names
    one ("Answer: B", "**A**", '{"verdict": "TIE"}'). JudgeFailed for anything else."""
    if len(text) > MAX_ANSWER_CHARS:
        raise JudgeFailed(f"malformed answer: {len(text)} characters where one word was asked")
    for line in reversed([line for line in text.strip().splitlines() if line.strip()]):
        found = {m.upper() for m in _ANSWER.findall(line)}
        if len(found) == 1:
            return ANSWERS[found.pop()]  # type: ignore[return-value]
        if found:
            raise JudgeFailed(f"malformed answer: {line.strip()[:200]!r} names more than one")
    raise JudgeFailed(f"malformed answer: {text.strip()[:200]!r} is not A, B or TIE")


# The three kinds ------------------------------------------------------------------------------


@dataclass
class RuleAsker:
    """A rule (engine.rules) as a judge: it reads the last user turn and the two texts."""

    rule: JudgeRule

    def ask(self, ask: JudgeAsk) -> Answer:
        prompt = next(
            (str(m.get("content", "")) for m in reversed(ask.prompt) if m.get("role") == "user"),
            "",
        )
        verdict = self.rule.judge(prompt, ask.first, ask.second)
        return Answer(position={"a": "first", "b": "second", "tie": "tie"}[verdict])  # type: ignore[arg-type]


@dataclass
class Usage:
    """What an endpoint judge has cost so far."""

    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def cost_usd(self, *, per_million_input: float, per_million_output: float) -> float:
        return (
            self.prompt_tokens * per_million_input + self.completion_tokens * per_million_output
        ) / 1e6


# Statuses worth another try: rate limited, or the server's own trouble.
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


@dataclass
class OpenAIAsker:
    """An LLM behind an OpenAI-compatible `POST {base_url}/chat/completions`.

    Each request waits its turn under `requests_per_minute` (shared by the threads of one
    asker), times out after `timeout_s`, and is tried again after 429, 5xx, a timeout or a
    dropped connection, up to `max_retries` times with exponential backoff (a Retry-After
    header, when sent, is honoured up to `max_backoff_s`). Other 4xx statuses mean the
    request itself is refused (a wrong key, model or URL): JudgeUnusable.
    """

    base_url: str
    model: str
    api_key: str = ""
    timeout_s: float = 60.0
    max_retries: int = 4
    requests_per_minute: float = 60.0
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    max_tokens: int = 16
    usage: Usage = field(default_factory=Usage)
    sleep: Callable[[float], None] = time.sleep
    _next_at: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def ask(self, ask: JudgeAsk) -> Answer:
        body = {
            "model": self.model,
            "messages": judge_messages(ask),
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }
        reply = self._post(body)
        try:
            text = str(reply["choices"][0]["message"]["content"] or "")
        except (KeyError, IndexError, TypeError):
            raise JudgeFailed(
                f"malformed answer: no choices[0].message.content in {json.dumps(reply)[:200]}"
            ) from None
        usage = reply.get("usage")
        usage = usage if isinstance(usage, dict) else {}  # optional; a server may omit it
        prompt_tokens = _count(usage.get("prompt_tokens"))
        completion_tokens = _count(usage.get("completion_tokens"))
        self.usage.prompt_tokens += prompt_tokens
        self.usage.completion_tokens += completion_tokens
        return Answer(
            position=answer_read(text),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        url = self.base_url.rstrip("/") + "/chat/completions"
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.usage.retries += 1
            self._wait_turn()
            self.usage.requests += 1
            wait = self.backoff_s * 2**attempt * (0.5 + random.random() / 2)
            try:
                request = urllib.request.Request(url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    raw = response.read(1_000_000)
                try:
                    reply = json.loads(raw)
                except ValueError:
                    raise JudgeFailed(f"malformed answer: not JSON ({raw[:100]!r})") from None
                if not isinstance(reply, dict):
                    raise JudgeFailed(f"malformed answer: {str(reply)[:100]}")
                return reply
            except urllib.error.HTTPError as error:
                detail = error.read(300).decode(errors="replace")
                if error.code not in RETRY_STATUSES:
                    raise JudgeUnusable(
                        f"{url} refused the request: HTTP {error.code} {detail}".strip()
                    ) from None
                last = f"HTTP {error.code}"
                retry_after = _seconds(error.headers.get("Retry-After"))
                if retry_after is not None:
                    wait = retry_after
            except (TimeoutError, urllib.error.URLError, ConnectionError) as error:
                reason = getattr(error, "reason", error)
                last = (
                    f"timed out after {self.timeout_s:g} s"
                    if isinstance(reason, TimeoutError)
                    else f"cannot reach it ({reason})"
                )
            if attempt < self.max_retries:
                self.sleep(min(wait, self.max_backoff_s))
        raise JudgeFailed(f"{url}: {last}, {self.max_retries + 1} tries")

    def _wait_turn(self) -> None:
        """Space requests 60 / requests_per_minute seconds apart."""
        gap = 60.0 / self.requests_per_minute if self.requests_per_minute > 0 else 0.0
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next_at)
            self._next_at = start + gap
        if start > now:
            self.sleep(start - now)


def _count(value: Any) -> int:
    """A token count from a reply's usage; 0 for anything that is not one."""
    return value if isinstance(value, int) and value >= 0 else 0


def _seconds(header: str | None) -> float | None:
    try:
        return max(0.0, float(header)) if header is not None else None
    except ValueError:
        return None


@dataclass
class LocalModelAsker:
    """A causal LM on this machine, asked the same chat: its answer is whichever of "A", "B"
    and "TIE" its next-token logits rank first (one forward pass, no sampling), with the
    margin of "A" over "B" (judge_pair decides by the margins). The tokens an
    ask shares with the one before (the guidelines, and for the swapped ask the conversation)
    are not computed again: their key/value cache is kept and cropped to the shared prefix.
    The packaged 135M model is a weak judge; it is here so the offline demo has one."""

    model: Any
    tokenizer: Any
    _ids: list[int] = field(default_factory=list)
    _cache: Any = None

    def ask(self, ask: JudgeAsk) -> Answer:
        import torch

        from alignment.engine.turns import prompt_ids

        messages = judge_messages(ask)
        # (A chat template without a system role gets the guidelines in the user turn.)
        if not _takes_system(self.tokenizer):
            messages = [
                {
                    "role": "user",
                    "content": messages[0]["content"] + "\n\n" + messages[1]["content"],
                }
            ]
        ids = prompt_ids(self.tokenizer, messages)
        context = getattr(self.model.config, "max_position_embeddings", None)
        if context is not None and len(ids) > context:
            raise JudgeFailed(f"the ask is {len(ids)} tokens, past the model's {context}")
        shared = 0
        for x, y in zip(self._ids, ids[:-1], strict=False):  # at least one token to run
            if x != y:
                break
            shared += 1
        if self._cache is None or shared == 0:
            from transformers import DynamicCache

            self._cache, shared = DynamicCache(), 0
        elif shared < len(self._ids):
            self._cache.crop(shared - len(self._ids))  # a negative count: tokens to drop
        device = next(self.model.parameters()).device
        with torch.no_grad():
            logits = self.model(
                input_ids=torch.tensor([ids[shared:]], device=device),
                cache=self._cache,
                use_cache=True,
                logits_to_keep=1,
            ).logits[0, -1]
        self._ids = ids
        options = list(ANSWERS)
        first = [self.tokenizer.encode(o, add_special_tokens=False)[0] for o in options]
        scores = [float(logits[token]) for token in first]
        best = max(range(len(options)), key=lambda i: scores[i])
        return Answer(
            position=ANSWERS[options[best]],  # type: ignore[arg-type]
            prompt_tokens=len(ids) - shared,
            margin=scores[options.index("A")] - scores[options.index("B")],
        )


def _takes_system(tokenizer: Any) -> bool:
    try:
        tokenizer.apply_chat_template(
            [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}], tokenize=False
        )
    except Exception:
        return False
    return True


def local_asker_load(
    *, source: str, models_dir: str, trust_remote_code: bool = False
) -> LocalModelAsker:
    """The model `source` names (a Hugging Face id, a directory or packaged:<name>) as a
    judge."""
    from alignment.engine.generation import policy_load
    from alignment.engine.sources import model_path_resolve, tokenizer_load, torch_threads_fit

    torch_threads_fit()
    path = model_path_resolve(source=source, models_dir=models_dir)
    return LocalModelAsker(
        model=policy_load(path, adapter=None, trust_remote_code=trust_remote_code),
        tokenizer=tokenizer_load(path, trust_remote_code=trust_remote_code),
    )
