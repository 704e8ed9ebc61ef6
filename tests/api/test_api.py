"""The API end to end through token authentication: the annotation flow, the gates, errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.authtoken.models import Token

from alignment.services.model_versions import model_version_base_ensure
from annotate.models import Comparison, Judgment, Lease, Project, Prompt, Role
from annotate.services.judgments import judgment_submit
from annotate.services.projects import membership_set
from tests.factories import comparison_make

pytestmark = pytest.mark.django_db

API = "/api/v1"


class Api:
    """A client that speaks JSON with a user's token, as a script or another service would."""

    def __init__(self, user: User | None) -> None:
        self.client = Client()
        self.headers = {}
        if user is not None:
            token, _ = Token.objects.get_or_create(user=user)
            self.headers = {"HTTP_AUTHORIZATION": f"Token {token.key}"}

    def get(self, path: str, **query: Any) -> Any:
        return self.client.get(API + path, query, **self.headers)

    def post(self, path: str, body: Any = None, *, raw: str | None = None) -> Any:
        data = raw if raw is not None else json.dumps(body if body is not None else {})
        return self.client.post(API + path, data, content_type="application/json", **self.headers)


def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["status"] == status and error["message"]
    return error


@pytest.fixture
def comparisons(project: Project) -> list[Comparison]:
    prompts = list(project.prompts.filter(split="train").order_by("id"))
    return [comparison_make(prompt, seed=i) for i, prompt in enumerate(prompts[:3])]


def test_it_runs_the_whole_annotation_flow(
    project: Project, annotator: User, comparisons: list[Comparison]
) -> None:
    api = Api(annotator)
    page = api.get(f"/projects/{project.slug}/assignment/").json()
    assert page["guideline_seen_version"] == 0 and page["guideline_version"] == 1
    acknowledged = api.post(f"/projects/{project.slug}/guidelines/", {"version": 1})
    assert acknowledged.json() == {"guideline_seen_version": 1}

    # Asking again keeps the same held pair; its sides are the lease's.
    page = api.get(f"/projects/{project.slug}/assignment/").json()
    again = api.get(f"/projects/{project.slug}/assignment/").json()
    held = page["assignment"]
    assert held is not None and again["assignment"] == held
    assert page["choices"] == ["left", "right", "tie", "both_bad"]
    assert page["progress"]["remaining"] == 3
    comparison = Comparison.objects.get(pk=held["comparison_id"])
    left = comparison.response_a if comparison.left_is_a else comparison.response_b
    assert held["left"]["text"] == left.text and held["prompt"] == comparison.prompt.messages

    body = {"choice": "left", "idempotency_key": "key-0001-abcdef", "rationale": "Shorter."}
    made = api.post(f"/projects/{project.slug}/comparisons/{comparison.pk}/judgments/", body)
    assert made.status_code == 201, made.content
    judgment = made.json()
    assert judgment["side"] == "left" and judgment["annotator"] == annotator.username
    assert judgment["choice"] == ("a" if comparison.left_is_a else "b")
    assert judgment["guideline_version"] == 1
    # A retried request with the same key returns the first judgment; nothing is added.
    retried = api.post(f"/projects/{project.slug}/comparisons/{comparison.pk}/judgments/", body)
    assert retried.status_code == 201 and retried.json()["id"] == judgment["id"]
    assert Judgment.objects.filter(annotator=annotator).count() == 1

    # Undo takes it back and holds the pair again, with the same sides.
    undone = api.post(f"/projects/{project.slug}/judgments/{judgment['id']}/undo/")
    assert undone.status_code == 200 and undone.json()["superseded"] is True
    page = api.get(f"/projects/{project.slug}/assignment/").json()
    assert page["assignment"] == held
    api.post(
        f"/projects/{project.slug}/comparisons/{comparison.pk}/judgments/", {"choice": "right"}
    )

    # Skip the next one; judge the last; then nothing is left.
    nxt = api.get(f"/projects/{project.slug}/assignment/").json()["assignment"]
    skipped = api.post(
        f"/projects/{project.slug}/comparisons/{nxt['comparison_id']}/skip/",
        {"reason": "Outside my expertise"},
    )
    assert skipped.json() == {
        "comparison_id": nxt["comparison_id"],
        "reason": "Outside my expertise",
    }
    last = api.get(f"/projects/{project.slug}/assignment/").json()["assignment"]
    assert last["comparison_id"] not in (comparison.pk, nxt["comparison_id"])
    api.post(
        f"/projects/{project.slug}/comparisons/{last['comparison_id']}/judgments/",
        {"choice": "tie"},
    )
    done = api.get(f"/projects/{project.slug}/assignment/").json()
    assert done["assignment"] is None and done["progress"]["judged"] == 2

    mine = api.get(f"/projects/{project.slug}/judgments/").json()
    assert mine["count"] == 3  # the undone one stays on record, superseded
    assert [j["superseded"] for j in mine["results"]] == [False, False, True]


def test_it_shows_annotators_only_their_own_judgments(
    project: Project, annotator: User, lead: User, make_user: Any, comparisons: list[Comparison]
) -> None:
    other = make_user("other-annotator")
    membership_set(project=project, user=other, role=Role.ANNOTATOR)
    judgment_submit(comparison_id=comparisons[0].pk, annotator=other, choice="a")
    judgment_submit(comparison_id=comparisons[1].pk, annotator=annotator, choice="b")

    mine = Api(annotator).get(f"/projects/{project.slug}/judgments/", annotator="other-annotator")
    assert [j["annotator"] for j in mine.json()["results"]] == [annotator.username]
    everyone = Api(lead).get(f"/projects/{project.slug}/judgments/").json()
    assert {j["annotator"] for j in everyone["results"]} == {annotator.username, other.username}
    one = Api(lead).get(f"/projects/{project.slug}/judgments/", annotator="other-annotator")
    assert [j["annotator"] for j in one.json()["results"]] == [other.username]
    # Reviewer-level reads are a 404 for annotators, as the pages are.
    _error(Api(annotator).get(f"/projects/{project.slug}/comparisons/{comparisons[0].pk}/"), 404)
    detail = Api(lead).get(f"/projects/{project.slug}/comparisons/{comparisons[0].pk}/").json()
    assert [j["annotator"] for j in detail["judgments"]] == [other.username]


def test_it_answers_errors_in_one_json_shape(
    project: Project, annotator: User, outsider: User, comparisons: list[Comparison]
) -> None:
    api = Api(annotator)
    url = f"/projects/{project.slug}/comparisons/{comparisons[0].pk}/judgments/"

    error = _error(api.post(url, {"choice": "sideways"}), 400)
    assert error["code"] == "invalid" and "choice" in error["fields"]
    assert error["message"].startswith("Invalid request: choice:")
    assert _error(api.post(url, raw="{not json"), 400)["code"] == "parse_error"
    assert (
        _error(api.post(url, raw='{"choice": "left", "rationale": "\\ud800"}'), 400)["code"]
        == "parse_error"
    )
    assert (
        "rationale"
        in _error(api.post(url, {"choice": "left", "rationale": "a\x00b"}), 400)["fields"]
    )
    # A rule of the project: criteria it does not have.
    refused = _error(api.post(url, {"choice": "left", "criteria": {"style": "left"}}), 422)
    assert refused["code"] == "rejected"
    assert not Judgment.objects.exists()

    # Outside one's projects, and objects of another project: 404, never 403.
    _error(Api(outsider).get(f"/projects/{project.slug}/"), 404)
    _error(Api(outsider).post(url, {"choice": "left"}), 404)
    _error(
        api.post(f"/projects/{project.slug}/comparisons/999999/judgments/", {"choice": "left"}), 404
    )
    # No credentials, or a wrong token: 401 with the scheme to use.
    anonymous = Api(None).get(f"/projects/{project.slug}/")
    assert _error(anonymous, 401)["code"] == "not_authenticated"
    assert anonymous["WWW-Authenticate"] == "Token"
    bad = Client().get(f"{API}/projects/", HTTP_AUTHORIZATION="Token nope")
    assert _error(bad, 401)["code"] == "authentication_failed"
    # A path no pattern matches, or an id too long for the database: a JSON 404 as well.
    _error(api.get("/no-such-thing/"), 404)
    _error(api.get(f"/projects/{project.slug}/comparisons/12345678901234567890/"), 404)
    assert not Lease.objects.filter(annotator=outsider).exists()


def test_it_imports_rows_all_or_nothing(project: Project, lead: User) -> None:
    api = Api(lead)
    before = Prompt.objects.filter(project=project).count()
    rows = [{"prompt": "A fine question?"}, {"prompt": 5}, {"messages": []}]
    error = _error(api.post(f"/projects/{project.slug}/prompts/", {"rows": rows}), 422)
    assert error["code"] == "import_refused"
    assert [row["line"] for row in error["rows"]] == [2, 3]
    assert Prompt.objects.filter(project=project).count() == before

    kept = api.post(f"/projects/{project.slug}/prompts/", {"rows": rows, "valid_only": True})
    assert kept.status_code == 201, kept.content
    assert kept.json()["created"] == 1 and [r["line"] for r in kept.json()["skipped"]] == [2, 3]
    listed = api.get(f"/projects/{project.slug}/prompts/", limit=1, offset=before).json()
    assert listed["count"] == before + 1
    assert listed["results"][0]["messages"] == [{"role": "user", "content": "A fine question?"}]
    # The same row again: skipped and listed, unless kept.
    again = api.post(f"/projects/{project.slug}/prompts/", {"rows": [rows[0], {"prompt": "New?"}]})
    assert again.status_code == 201 and again.json()["duplicates"] == [1]
    assert again.json()["created"] == 1
    kept = api.post(
        f"/projects/{project.slug}/prompts/", {"rows": [rows[0]], "keep_duplicates": True}
    )
    assert kept.status_code == 201 and kept.json()["duplicates"] == []


def test_it_exports_what_the_export_page_exports(
    project: Project, lead: User, comparisons: list[Comparison]
) -> None:
    for comparison in comparisons:
        judgment_submit(comparison_id=comparison.pk, annotator=lead, choice="a")
    response = Api(lead).get(f"/projects/{project.slug}/export/", format="dpo")
    assert response.status_code == 200 and response["Content-Type"] == "application/jsonl"
    rows = [json.loads(line) for line in b"".join(response.streaming_content).splitlines()]
    assert len(rows) == 3 and set(rows[0]) >= {"prompt", "chosen", "rejected"}
    card = Api(lead).get(f"/projects/{project.slug}/export/card/", format="dpo")
    assert card.status_code == 200 and b"3" in card.content
    refused = Api(lead).get(f"/projects/{project.slug}/export/", min_agreement="2")
    assert "min_agreement" in _error(refused, 400)["fields"]


def test_it_starts_training_runs_and_refuses_bad_settings(
    project: Project,
    lead: User,
    comparisons: list[Comparison],
    django_capture_on_commit_callbacks: Any,
) -> None:
    api = Api(lead)
    for comparison in comparisons:
        judgment_submit(comparison_id=comparison.pk, annotator=lead, choice="a")
    base = model_version_base_ensure(project=project)
    versions = api.get(f"/projects/{project.slug}/model-versions/").json()
    assert [(v["id"], v["is_base"]) for v in versions] == [(base.pk, True)]
    url = f"/projects/{project.slug}/training-runs/"
    bad = api.post(url, {"base_version_id": base.pk, "settings": {"beta": -1}})
    assert _error(bad, 400)["fields"]["settings"]["beta"] == [
        "beta must be above 0 and at most 10."
    ]
    with django_capture_on_commit_callbacks() as dispatched:
        made = api.post(url, {"base_version_id": base.pk, "settings": {"loss_type": "ipo"}})
    assert made.status_code == 201, made.content
    run = made.json()
    assert run["status"] == "queued" and run["config"]["loss_type"] == "ipo"
    assert run["snapshot"]["n_pairs"] == 3 and len(dispatched) == 1
    # One active run per project.
    assert "already" in _error(api.post(url, {"base_version_id": base.pk}), 422)["message"]
    detail = api.get(f"/projects/{project.slug}/training-runs/{run['id']}/").json()
    assert detail["points"] == [] and detail["id"] == run["id"]


def test_it_starts_a_run_from_a_preset_with_overrides(
    project: Project, lead: User, comparisons: list[Comparison]
) -> None:
    judgment_submit(comparison_id=comparisons[0].pk, annotator=lead, choice="a")
    judgment_submit(comparison_id=comparisons[1].pk, annotator=lead, choice="tie")
    base = model_version_base_ensure(project=project)
    url = f"/projects/{project.slug}/training-runs/"
    body = {"base_version_id": base.pk, "preset": "kto", "settings": {"beta": 0.3}}
    made = Api(lead).post(url, body)
    assert made.status_code == 201, made.content
    config = made.json()["config"]
    assert (config["method"], config["beta"], config["desirable_weight"]) == ("kto", 0.3, 1.0)
    assert made.json()["snapshot"]["n_pairs"] == 2  # KTO takes the tie as well
    unknown = Api(lead).post(url, {"base_version_id": base.pk, "preset": "ppo"})
    assert "preset" in _error(unknown, 400)["fields"]


def test_it_starts_a_run_with_the_rounds_plan(
    project: Project, lead: User, comparisons: list[Comparison]
) -> None:
    judgment_submit(comparison_id=comparisons[0].pk, annotator=lead, choice="a")
    base = model_version_base_ensure(project=project)
    url = f"/projects/{project.slug}/training-runs/"
    wrong = Api(lead).post(url, {"base_version_id": base.pk, "start_from": "middle"})
    assert "start_from" in _error(wrong, 400)["fields"]
    unlisted = Api(lead).post(url, {"base_version_id": base.pk, "data_scope": "rounds"})
    assert "List the rounds" in _error(unlisted, 422)["message"]
    body = {"base_version_id": base.pk, "start_from": "base", "reference": "base"}
    made = Api(lead).post(url, body)
    assert made.status_code == 201, made.content
    run = made.json()
    assert (run["start_from"], run["reference"], run["data_scope"]) == (
        "base",
        "base",
        "cumulative",
    )


def test_it_starts_a_guided_winner_stays_round_and_names_a_bad_one(
    project: Project, lead: User
) -> None:
    base = model_version_base_ensure(project=project)
    url = f"/projects/{project.slug}/rounds/"
    body = {
        "policy_id": base.pk,
        "train_prompts": 2,
        "samples_per_prompt": 3,
        "pair_selection": "winner_stays",
        "guidance": "Prefer the response that ends by asking a question.",
    }
    odd = Api(lead).post(url, body)
    assert "even number of samples per prompt" in _error(odd, 422)["message"]
    assert not project.rounds.exists()
    made = Api(lead).post(url, {**body, "samples_per_prompt": 4})
    assert made.status_code == 201, made.content
    assert made.json()["guidance"] == body["guidance"]
    assert made.json()["pair_selection"] == "winner_stays"
