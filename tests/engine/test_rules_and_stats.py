from __future__ import annotations

import random
import sys
import types

import pytest

from alignment.engine.drift import drift_of, is_refusal, repetition
from alignment.engine.rules import BUILTIN_RULES, LENGTH_PROPERTY, rule_load
from alignment.engine.stats import (
    Game,
    bradley_terry,
    head_to_head_verdict,
    win_counts,
    win_rate,
)


def test_it_prefers_the_shorter_response_and_ties_equal_lengths() -> None:
    shorter = rule_load("shorter")
    assert shorter.judge("p", "short", "much longer") == "a"
    assert shorter.judge("p", "much longer", "short") == "b"
    assert shorter.judge("p", "abc", "xyz") == "tie"
    assert shorter.measure("abcd") == 4.0
    assert shorter.property_name == LENGTH_PROPERTY


def test_it_prefers_the_longer_response_with_longer() -> None:
    assert rule_load("longer").judge("p", "short", "much longer") == "b"


def test_it_prefers_the_response_without_a_list() -> None:
    no_lists = rule_load("no_lists")
    bullets = "Tips:\n- sleep\n- eat"
    numbered = "Steps:\n1. open\n2) close"
    prose = "Sleep well and eat well. The 2.5 figure is - as noted - rough."
    assert no_lists.judge("p", bullets, prose) == "b"
    assert no_lists.judge("p", prose, numbered) == "a"
    assert no_lists.judge("p", bullets, numbered) == "tie"
    assert no_lists.judge("p", prose, prose + "!") == "tie"
    assert [no_lists.measure(t) for t in (bullets, numbered, prose)] == [0.0, 0.0, 1.0]


def test_it_prefers_the_response_that_ends_by_asking_a_question() -> None:
    asks = rule_load("asks_followup")
    question = "Try a warm bath. Would you like more tips?"
    quoted = 'You could say: "Shall we go?"  \n'
    emphasised = "Done. **Anything else I can help with?**"
    statement = "Try a warm bath. Is it late? Then sleep."
    assert asks.judge("p", statement, question) == "b"
    assert asks.judge("p", quoted, statement) == "a"
    assert asks.judge("p", question, emphasised) == "tie"  # both ask
    assert asks.judge("p", statement, "No.") == "tie"  # neither does
    assert asks.judge("p", "Quoi\uff1f", "Oui.") == "a"  # a full-width question mark
    assert [asks.measure(t) for t in (question, statement)] == [1.0, 0.0]


def test_it_prefers_a_numbered_list_of_at_least_three_steps() -> None:
    steps = rule_load("numbered_steps")
    three = "Do this:\n1. open\n2. stir\n3) close"
    bold = "**1.** open\n**2.** stir\n**3.** close"
    two = "1. open\n2. close"
    bullets = "- open\n- stir\n- close"
    assert steps.judge("p", two, three) == "b"
    assert steps.judge("p", bold, bullets) == "a"
    assert steps.judge("p", three, bold) == "tie"
    assert steps.judge("p", two, bullets) == "tie"
    assert [steps.measure(t) for t in (three, two)] == [1.0, 0.0]


def test_it_prefers_plainer_words_with_a_tie_band() -> None:
    plain = rule_load("plain_words")
    short_words = "I can see the cat on the mat."  # 8 words, 21 letters: 2.625
    long_words = "Consequently, substantial considerations necessitate deliberation."
    assert plain.judge("p", long_words, short_words) == "b"
    assert plain.judge("p", short_words, long_words) == "a"
    # 2.625 against 2.67 characters a word: within the 0.3 band; 3.0 is not.
    assert plain.judge("p", short_words, "Go to the big red bus.") == "tie"
    assert plain.judge("p", "The dog ran far.", short_words) == "b"
    assert plain.judge("p", "", short_words) == "b"  # no words is never plainer
    assert plain.judge("p", "", "...") == "tie"
    assert plain.measure(short_words) == pytest.approx(2.625)
    assert plain.measure("") == 0.0


def test_the_panel_names_loadable_rules() -> None:
    from alignment.engine.rules import PANEL

    assert [rule_load(name).name for name in PANEL] == list(PANEL)
    # Each says what it prefers in words: the loop check's guidance for guided samples.
    assert all(rule_load(name).description.startswith("Prefer the") for name in PANEL)


def test_a_functions_description_is_the_first_paragraph_of_its_docstring(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def politer(prompt: str, a: str, b: str) -> str:
        """Prefer the politer
        response.

        Politeness is counted in pleases."""
        return "tie"

    def silent(prompt: str, a: str, b: str) -> str:
        return "tie"

    module = _install_module(monkeypatch, politer=politer, silent=silent)
    assert rule_load(f"{module}:politer").description == "Prefer the politer response."
    assert rule_load(f"{module}:silent").description == ""


def _install_module(monkeypatch: pytest.MonkeyPatch, **attributes: object) -> str:
    module = types.ModuleType("prefloop_test_rules")
    for name, value in attributes.items():
        setattr(module, name, value)
    monkeypatch.setitem(sys.modules, "prefloop_test_rules", module)
    return "prefloop_test_rules"


def test_it_loads_a_function_by_dotted_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def politer(prompt: str, a: str, b: str) -> str:
        return "a" if "please" in a else "b"

    module = _install_module(monkeypatch, politer=politer)
    rule = rule_load(f"{module}:politer")
    assert rule.name == f"{module}:politer"
    assert rule.judge("p", "please", "no") == "a"
    assert rule.property_name == LENGTH_PROPERTY
    assert rule.measure("abc") == 3.0


def test_it_uses_the_functions_own_property(monkeypatch: pytest.MonkeyPatch) -> None:
    def politer(prompt: str, a: str, b: str) -> str:
        return "tie"

    politer.property_name = "share polite"  # type: ignore[attr-defined]
    politer.measure = lambda text: float("please" in text)  # type: ignore[attr-defined]
    module = _install_module(monkeypatch, politer=politer)
    rule = rule_load(f"{module}:politer")
    assert rule.property_name == "share polite"
    assert rule.measure("please") == 1.0


def test_it_rejects_an_invalid_verdict_from_a_custom_rule(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = _install_module(monkeypatch, sloppy=lambda p, a, b: "left")
    rule = rule_load(f"{module}:sloppy")
    with pytest.raises(ValueError, match="returned 'left'"):
        rule.judge("p", "x", "y")


@pytest.mark.parametrize("spec", ["shortest", "no_such_module_xyz:f", "json:no_such_function"])
def test_it_lists_the_builtins_for_an_unknown_rule(spec: str) -> None:
    with pytest.raises(ValueError) as error:
        rule_load(spec)
    for name in BUILTIN_RULES:
        assert name in str(error.value)


def test_it_computes_a_wilson_interval() -> None:
    result = win_rate(wins=8, losses=2, ties=0)
    assert result.rate == pytest.approx(0.8)
    assert result.low == pytest.approx(0.4902, abs=1e-4)
    assert result.high == pytest.approx(0.9433, abs=1e-4)
    assert (result.n, result.wins, result.losses, result.ties) == (10, 8, 2, 0)


def test_games_of_one_prompt_count_as_fewer_independent_ones() -> None:
    from alignment.engine.stats import effective_games, player_scores_by_prompt

    # Ten prompts, two games each. Where a prompt's two games always agree, they are worth
    # one: the interval is the one of ten games, not twenty.
    agreeing = [[1.0, 1.0]] * 8 + [[0.0, 0.0]] * 2
    assert effective_games(agreeing) == pytest.approx(10.0)
    # Games that agree within a prompt no more than chance keep about their number (14 of
    # 16: the small-sample correction of the cluster variance).
    mixed = [[1.0, 0.0], [0.0, 1.0]] * 2 + [[1.0, 1.0]] * 2 + [[0.0, 0.0]] * 2
    assert effective_games(mixed) == pytest.approx(14.0)
    clustered = win_rate(wins=16, losses=4, ties=0, effective_n=effective_games(agreeing))
    assert clustered.low == pytest.approx(win_rate(wins=8, losses=2, ties=0).low)
    assert clustered.low < win_rate(wins=16, losses=4, ties=0).low
    assert clustered.effective_n == 10.0 and clustered.n == 20
    # Scores read from the player's side, grouped by prompt; other players' games left out.
    games = [
        Game(first=1, second=2, score=1.0, prompt=7),
        Game(first=2, second=1, score=1.0, prompt=7),
        Game(first=1, second=2, score=0.5, prompt=8),
        Game(first=1, second=3, score=1.0, prompt=8),
    ]
    assert player_scores_by_prompt(games, player=1, opponent=2) == [[1.0, 0.0], [0.5]]


def test_it_counts_ties_as_half_a_win() -> None:
    result = win_rate(wins=3, losses=1, ties=4)
    assert result.rate == pytest.approx(5 / 8)
    assert result.low < result.rate < result.high


def test_it_narrows_the_interval_with_more_data_and_lower_confidence() -> None:
    small = win_rate(wins=8, losses=2, ties=0)
    large = win_rate(wins=80, losses=20, ties=0)
    loose = win_rate(wins=8, losses=2, ties=0, confidence=0.5)
    assert large.high - large.low < small.high - small.low
    assert loose.high - loose.low < small.high - small.low


def test_it_stays_within_zero_and_one_at_the_extremes() -> None:
    assert win_rate(wins=5, losses=0, ties=0).high == pytest.approx(1.0)
    assert win_rate(wins=0, losses=5, ties=0).low == pytest.approx(0.0)
    empty = win_rate(wins=0, losses=0, ties=0)
    assert (empty.rate, empty.low, empty.high, empty.n) == (0.5, 0.0, 1.0, 0)


def test_it_rejects_negative_counts_and_bad_confidence() -> None:
    with pytest.raises(ValueError, match="wins"):
        win_rate(wins=-1, losses=0, ties=0)
    with pytest.raises(ValueError, match="confidence"):
        win_rate(wins=1, losses=0, ties=0, confidence=1.0)


def test_bradley_terry_recovers_simulated_strengths() -> None:
    true = {1: 1000.0, 2: 1200.0, 3: 1400.0}  # 400 points = 10:1 odds
    rng = random.Random(7)
    games = []
    for _ in range(1500):
        a, b = rng.sample(sorted(true), 2)
        p_first = 1 / (1 + 10 ** ((true[b] - true[a]) / 400))
        games.append(Game(first=a, second=b, score=1.0 if rng.random() < p_first else 0.0))
    ratings = bradley_terry(games, anchor=1, bootstrap=100)
    assert [r.player for r in ratings] == [3, 2, 1]
    by_player = {r.player: r for r in ratings}
    assert by_player[1].rating == 1000.0  # the anchor
    for player, rating in by_player.items():
        assert abs(rating.rating - true[player]) < 60, (player, rating)
        assert rating.low <= rating.rating <= rating.high
    assert by_player[3].low > by_player[1].high  # clearly apart
    assert sum(r.games for r in ratings) == 2 * len(games)


def test_bradley_terry_keeps_an_unbeaten_player_finite() -> None:
    games = [Game(first=2, second=1, score=1.0) for _ in range(5)] + [
        Game(first=1, second=2, score=0.5)
    ]
    ratings = {r.player: r for r in bradley_terry(games, anchor=1, bootstrap=50)}
    assert 1000 < ratings[2].rating < 1600 and ratings[2].score == 5.5 / 6
    assert bradley_terry([]) == []


def test_head_to_head_verdicts_say_how_many_more_would_settle_it() -> None:
    assert head_to_head_verdict(wins=30, losses=10, ties=0).outcome == "better"
    assert head_to_head_verdict(wins=10, losses=30, ties=0).outcome == "worse"
    close = head_to_head_verdict(wins=11, losses=9, ties=0)
    assert close.outcome == "undecided" and close.more_needed is not None
    # At a 55 % win rate about 380 head-to-heads bring the 95 % interval clear of one half.
    assert 300 < close.more_needed + 20 < 450
    assert head_to_head_verdict(wins=0, losses=0, ties=0).more_needed is None
    assert head_to_head_verdict(wins=5, losses=5, ties=2).more_needed is None  # dead even


def test_it_counts_a_players_wins_losses_and_ties_against_one_opponent() -> None:
    games = [
        Game(first=1, second=2, score=1.0),  # 1 wins
        Game(first=2, second=1, score=1.0),  # 2 wins
        Game(first=2, second=1, score=0.0),  # 1 wins
        Game(first=1, second=2, score=0.5),
        Game(first=1, second=3, score=1.0),  # another opponent: left out
    ]
    assert win_counts(games, player=1, opponent=2) == (2, 1, 1)
    assert win_counts(games, player=2, opponent=1) == (1, 2, 1)
    assert win_counts([], player=1, opponent=2) == (0, 0, 0)


def test_drift_measures_refusals_repetition_and_truncation() -> None:
    assert is_refusal("I'm sorry, but I can't help with that.")
    assert is_refusal("As an AI language model, I do not have opinions.")
    assert not is_refusal("Sorry to hear that! Here is a plan: first, ...")
    assert repetition("one two three four five") == 0.0
    assert repetition("the cat sat " * 10) > 0.8
    drift = drift_of(["I cannot help with that.", "A fine answer here."], ["stop", "length"])
    assert drift is not None
    assert (drift.responses, drift.refusal_rate, drift.truncated_rate) == (2, 0.5, 0.5)
    assert drift_of([], []) is None
