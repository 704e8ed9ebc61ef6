"""The API's throttle on requests that start work or read a whole dataset."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.throttling import SimpleRateThrottle

from annotate.models import Project
from annotate.services.projects import membership_set


@pytest.fixture
def three_a_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    # DRF reads the rates once, into the class (settings overrides come too late).
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", {"expensive": "3/minute"})


def _client(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_it_throttles_a_users_exports_and_says_when_to_come_back(
    three_a_minute: None, project: Project, lead: User, make_user
) -> None:
    client = _client(lead)
    export = f"/api/v1/projects/{project.slug}/export/"
    assert [client.get(export).status_code for _ in range(3)] == [200] * 3
    refused = client.get(export)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "throttled"
    assert 0 < int(refused["Retry-After"]) <= 60
    # Other requests of the same user, and another lead's exports, pass.
    assert client.get(f"/api/v1/projects/{project.slug}/").status_code == 200
    other = make_user("lead2")
    membership_set(project=project, user=other, role="lead")
    assert _client(other).get(export).status_code == 200


def test_it_throttles_only_the_imports_of_the_prompt_list(
    three_a_minute: None, project: Project, lead: User
) -> None:
    client = _client(lead)
    prompts = f"/api/v1/projects/{project.slug}/prompts/"
    statuses = [
        client.post(
            prompts, {"rows": [{"prompt": f"Question {i}?"}]}, content_type="application/json"
        ).status_code
        for i in range(4)
    ]
    assert statuses == [201, 201, 201, 429]
    assert [client.get(prompts).status_code for _ in range(5)] == [200] * 5
