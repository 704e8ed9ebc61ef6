"""Model judges in the engine: reading a verdict, the swap that cancels position bias, and the
LLM judge against a stand-in OpenAI-compatible server over HTTP (retries on 429 and 5xx,
timeouts, malformed answers, refused requests, tokens, the rate limit)."""

from __future__ import annotations

from typing import Any

import pytest

from alignment.engine.judges import (
    Answer,
    JudgeAsk,
    JudgeFailed,
    JudgeUnusable,
    LocalModelAsker,
    OpenAIAsker,
    RuleAsker,
    answer_read,
    judge_messages,
    judge_pair,
)
from alignment.engine.rules import rule_load
from tests.openai_standin import Reply, prefers_shorter, responses_shown, standin_server

PROMPT = [{"role": "user", "content": "Say hello."}]
SHORT, LONG = "Hi.", "Hello there, it is very nice to meet you today."


@pytest.mark.parametrize(
    ("text", "position"),
    [
        ("A", "first"),
        (" b\n", "second"),
        ("TIE", "tie"),
        ("tie.", "tie"),
        ("Answer: B", "second"),
        ("**A**", "first"),
        ('{"verdict": "TIE"}', "tie"),
        ("Both are fine, but the first is shorter.\nA", "first"),
    ],
)
def test_it_reads_a_verdict_from_a_reply(text: str, position: str) -> None:
    assert answer_read(text) == position


@pytest.mark.parametrize("text", ["", "I cannot decide.", "A or B", "Better: C", "A" * 3000])
def test_it_refuses_a_reply_that_is_not_a_verdict(text: str) -> None:
    with pytest.raises(JudgeFailed, match="malformed answer"):
        answer_read(text)


class _Positional:
    """A judge that always prefers whatever it is shown first."""

    def ask(self, ask: JudgeAsk) -> Answer:
        return Answer(position="first")


def test_it_keeps_a_verdict_only_where_the_swapped_asks_agree() -> None:
    biased = judge_pair(_Positional(), guidelines="", prompt=PROMPT, a=SHORT, b=LONG)
    assert (biased.asked, biased.swapped, biased.verdict) == ("a", "b", None)
    assert not biased.consistent
    fair = judge_pair(
        RuleAsker(rule_load("shorter")), guidelines="", prompt=PROMPT, a=LONG, b=SHORT
    )
    assert (fair.asked, fair.swapped, fair.verdict) == ("b", "b", "b")


def test_it_asks_with_the_guidelines_and_both_responses_in_the_order_given() -> None:
    system, user = judge_messages(
        JudgeAsk(guidelines="Prefer brevity.", prompt=PROMPT, first=SHORT, second=LONG)
    )
    assert system["role"] == "system" and "Prefer brevity." in system["content"]
    assert responses_shown({"messages": [system, user]}) == (SHORT, LONG)
    assert "Say hello." in user["content"]


def _asker(base_url: str, **options: Any) -> tuple[OpenAIAsker, list[float]]:
    slept: list[float] = []
    asker = OpenAIAsker(
        base_url=base_url,
        model="judge-model",
        api_key="secret-key",
        requests_per_minute=0,
        sleep=slept.append,
        **options,
    )
    return asker, slept


def test_an_llm_judge_judges_both_ways_round_and_counts_its_tokens() -> None:
    with standin_server(prefers_shorter) as server:
        asker, _ = _asker(server.base_url)
        verdict = judge_pair(
            asker, guidelines="Prefer the shorter.", prompt=PROMPT, a=LONG, b=SHORT
        )
    assert verdict.verdict == "b" and verdict.consistent
    first, second = server.requests
    assert first.path == "/v1/chat/completions"
    assert first.headers["Authorization"] == "Bearer secret-key"
    assert first.body["model"] == "judge-model" and first.body["temperature"] == 0
    assert responses_shown(first.body) == (LONG, SHORT)
    assert responses_shown(second.body) == (SHORT, LONG)  # the swap
    assert (asker.usage.requests, asker.usage.prompt_tokens, asker.usage.completion_tokens) == (
        2,
        200,
        2,
    )
    assert asker.usage.cost_usd(per_million_input=1.0, per_million_output=2.0) == pytest.approx(
        (200 * 1.0 + 2 * 2.0) / 1e6
    )


def test_an_llm_judge_that_prefers_a_position_is_uncertain() -> None:
    with standin_server(lambda body: Reply("A")) as server:
        asker, _ = _asker(server.base_url)
        verdict = judge_pair(asker, guidelines="", prompt=PROMPT, a=SHORT, b=LONG)
    assert verdict.verdict is None and (verdict.asked, verdict.swapped) == ("a", "b")


def test_an_llm_judge_retries_429_and_5xx_with_backoff_honouring_retry_after() -> None:
    replies = iter([Reply(status=429, headers={"Retry-After": "7"}), Reply(status=503), Reply("B")])
    with standin_server(lambda body: next(replies)) as server:
        asker, slept = _asker(server.base_url, backoff_s=1.0)
        answer = asker.ask(JudgeAsk("", PROMPT, SHORT, LONG))
    assert answer.position == "second"
    assert len(server.requests) == 3 and asker.usage.retries == 2
    assert slept[0] == 7.0  # Retry-After
    assert 1.0 <= slept[1] <= 2.0  # backoff 1 s x 2^1, jittered to half or more


def test_an_llm_judge_gives_up_after_its_retries_without_an_answer() -> None:
    with standin_server(lambda body: Reply(status=500)) as server:
        asker, slept = _asker(server.base_url, max_retries=2)
        with pytest.raises(JudgeFailed, match="HTTP 500, 3 tries"):
            asker.ask(JudgeAsk("", PROMPT, SHORT, LONG))
    assert len(server.requests) == 3 and len(slept) == 2


def test_an_llm_judge_times_out_and_tries_again() -> None:
    replies = iter([Reply("A", delay_s=1.5), Reply("B")])
    with standin_server(lambda body: next(replies)) as server:
        asker, _ = _asker(server.base_url, timeout_s=0.3)
        assert asker.ask(JudgeAsk("", PROMPT, SHORT, LONG)).position == "second"
        asker, _ = _asker(server.base_url, timeout_s=0.3, max_retries=0)
        server.respond = lambda body: Reply("A", delay_s=1.5)
        with pytest.raises(JudgeFailed, match=r"timed out after 0\.3 s"):
            asker.ask(JudgeAsk("", PROMPT, SHORT, LONG))


@pytest.mark.parametrize(
    "reply",
    [
        Reply("I would rather not say."),
        Reply(None),
        Reply(body=b"<html>gateway</html>"),
        Reply(body=b'{"choices": []}'),
        Reply(body=b"[1, 2]"),
    ],
)
def test_a_malformed_answer_is_no_answer_and_says_why(reply: Reply) -> None:
    with standin_server(lambda body: reply) as server:
        asker, _ = _asker(server.base_url)
        with pytest.raises(JudgeFailed, match="malformed answer"):
            asker.ask(JudgeAsk("", PROMPT, SHORT, LONG))
    assert len(server.requests) == 1  # a malformed answer is not retried


@pytest.mark.parametrize("usage", [b'"lots"', b"[1]", b'{"prompt_tokens": "x"}', b"null"])
def test_a_reply_with_odd_usage_still_answers_and_counts_no_tokens(usage: bytes) -> None:
    body = b'{"choices": [{"message": {"content": "B"}}], "usage": ' + usage + b"}"
    with standin_server(lambda _: Reply(body=body)) as server:
        asker, _ = _asker(server.base_url)
        assert asker.ask(JudgeAsk("", PROMPT, SHORT, LONG)).position == "second"
    assert (asker.usage.prompt_tokens, asker.usage.completion_tokens) == (0, 0)


def test_a_refused_request_makes_the_judge_unusable_at_once() -> None:
    with standin_server(lambda body: Reply(status=401)) as server:
        asker, _ = _asker(server.base_url)
        with pytest.raises(JudgeUnusable, match="HTTP 401"):
            asker.ask(JudgeAsk("", PROMPT, SHORT, LONG))
    assert len(server.requests) == 1


def test_an_unreachable_endpoint_is_no_answer() -> None:
    asker, _ = _asker("http://127.0.0.1:9/v1", max_retries=1)
    with pytest.raises(JudgeFailed, match="cannot reach it"):
        asker.ask(JudgeAsk("", PROMPT, SHORT, LONG))


def test_an_llm_judge_spaces_its_requests_under_its_rate_limit() -> None:
    with standin_server(prefers_shorter) as server:
        asker, slept = _asker(server.base_url)
        asker.requests_per_minute = 60  # one a second
        for _ in range(3):
            asker.ask(JudgeAsk("", PROMPT, SHORT, LONG))
    # (The stub sleeps no time: the second and third wait for their turns, 1 s and 2 s on.)
    assert len(slept) == 2
    assert slept[0] == pytest.approx(1.0, abs=0.1) and slept[1] == pytest.approx(2.0, abs=0.1)


def test_a_local_model_answers_every_ask(tiny_model_dir: str) -> None:
    from alignment.engine.judges import local_asker_load

    asker = local_asker_load(source=tiny_model_dir, models_dir=tiny_model_dir)
    assert isinstance(asker, LocalModelAsker)
    verdict = judge_pair(asker, guidelines="Prefer the shorter.", prompt=PROMPT, a=SHORT, b=LONG)
    assert verdict.asked in ("a", "b", "tie") and verdict.swapped in ("a", "b", "tie")
    assert verdict.margin is not None
    assert verdict.verdict == ("a" if verdict.margin > 0 else "b" if verdict.margin < 0 else None)
    # An ask that reuses the cache of the asks before it answers as a fresh asker does.
    ask = JudgeAsk("Prefer the shorter.", [{"role": "user", "content": "Say bye."}], LONG, SHORT)
    cached = asker.ask(ask)
    fresh = LocalModelAsker(model=asker.model, tokenizer=asker.tokenizer).ask(ask)
    assert cached.prompt_tokens < fresh.prompt_tokens  # the guidelines were not run again
    assert cached.margin == pytest.approx(fresh.margin, abs=0.02)


class _Biased:
    """A judge with margins: a true preference for the shorter response, plus a strong pull
    towards whatever is shown first."""

    def ask(self, ask: JudgeAsk) -> Answer:
        preference = 0.5 if len(ask.first) < len(ask.second) else -0.5
        margin = preference + 3.0
        return Answer(position="first" if margin > 0 else "second", margin=margin)


def test_margins_cancel_a_position_bias_that_outweighs_the_preference() -> None:
    verdict = judge_pair(_Biased(), guidelines="", prompt=PROMPT, a=LONG, b=SHORT)
    assert (verdict.asked, verdict.swapped) == ("a", "b")  # each ask alone: the first shown
    assert verdict.margin == pytest.approx(-0.5) and verdict.verdict == "b"
