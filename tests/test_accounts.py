"""Logins that resist guessing, API tokens that expire and are revoked, the demo's public
passwords kept off production databases, and who may choose the code a worker runs."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.forms.models import model_to_dict
from django.test import Client
from rest_framework.authtoken.models import Token

from annotate.models import Project

LIMIT = settings.AXES_FAILURE_LIMIT


def _form_login(client: Client, path: str, username: str, password: str, address: str) -> int:
    response = client.post(path, {"username": username, "password": password}, REMOTE_ADDR=address)
    return response.status_code


def _token(client: Client, username: str, password: str, address: str = "10.0.0.1"):
    return client.post(
        "/api/v1/auth/token/",
        {"username": username, "password": password},
        content_type="application/json",
        REMOTE_ADDR=address,
    )


@pytest.mark.parametrize("path", ["/login/", "/admin/login/"])
def test_it_locks_an_account_out_after_repeated_wrong_passwords(
    make_user: Callable[..., User], path: str
) -> None:
    make_user("ann", superuser=True)
    client = Client()
    # Each from a new address: the account's own count locks it.
    for attempt in range(LIMIT - 1):
        assert _form_login(client, path, "ann", "wrong", f"10.0.1.{attempt}") == 200
    response = client.post(path, {"username": "ann", "password": "wrong"}, REMOTE_ADDR="10.0.2.1")
    assert response.status_code == 429
    # The right password now gets the same refusal, with when to come back.
    response = client.post(path, {"username": "ann", "password": "pw-ann"}, REMOTE_ADDR="10.0.2.2")
    assert response.status_code == 429
    assert response["Retry-After"] == str(int(settings.AXES_COOLOFF_TIME.total_seconds()))
    assert "Too many failed logins" in response.content.decode()
    assert "_auth_user_id" not in client.session
    # Another account is not locked by ann's failures.
    make_user("bob")
    assert _form_login(Client(), "/login/", "bob", "pw-bob", "10.0.3.1") == 302


def test_it_locks_an_address_out_after_wrong_passwords_for_many_accounts(
    make_user: Callable[..., User],
) -> None:
    make_user("ann")
    client = Client()
    for attempt in range(LIMIT):
        _form_login(client, "/login/", f"guess{attempt}", "wrong", "10.0.4.1")
    assert _form_login(client, "/login/", "ann", "pw-ann", "10.0.4.1") == 429
    assert _form_login(Client(), "/login/", "ann", "pw-ann", "10.0.4.2") == 302


def test_a_success_before_the_limit_starts_the_count_again(make_user: Callable[..., User]) -> None:
    make_user("ann")
    for _ in range(2):
        for _ in range(LIMIT - 1):
            assert _form_login(Client(), "/login/", "ann", "wrong", "10.0.5.1") == 200
        assert _form_login(Client(), "/login/", "ann", "pw-ann", "10.0.5.1") == 302


def test_the_token_endpoint_locks_out_with_the_apis_error_shape(
    make_user: Callable[..., User],
) -> None:
    make_user("ann")
    client = Client()
    for _ in range(LIMIT - 1):
        assert _token(client, "ann", "wrong").status_code == 400
    assert _token(client, "ann", "wrong").status_code == 429
    response = _token(client, "ann", "pw-ann")
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "locked_out"
    assert response["Retry-After"] == str(int(settings.AXES_COOLOFF_TIME.total_seconds()))
    assert not Token.objects.exists()


def test_it_counts_the_address_the_trusted_proxy_saw(
    make_user: Callable[..., User], settings
) -> None:
    settings.TRUSTED_PROXY_COUNT = 1
    make_user("ann")
    client = Client()
    for attempt in range(LIMIT):
        client.post(
            "/login/",
            {"username": f"guess{attempt}", "password": "wrong"},
            REMOTE_ADDR="10.9.9.9",  # the proxy
            HTTP_X_FORWARDED_FOR="spoofed, 203.0.113.7",
        )
    # The same proxy, another client: not locked; the guessing client: locked.
    other = client.post(
        "/login/",
        {"username": "ann", "password": "pw-ann"},
        REMOTE_ADDR="10.9.9.9",
        HTTP_X_FORWARDED_FOR="203.0.113.8",
    )
    assert other.status_code == 302
    guesser = Client().post(
        "/login/",
        {"username": "ann", "password": "pw-ann"},
        REMOTE_ADDR="10.9.9.9",
        HTTP_X_FORWARDED_FOR="203.0.113.7",
    )
    assert guesser.status_code == 429


def _api_status(key: str) -> int:
    return Client().get("/api/v1/projects/", HTTP_AUTHORIZATION=f"Token {key}").status_code


def test_a_token_expires_and_the_endpoint_then_issues_a_new_one(
    make_user: Callable[..., User],
) -> None:
    make_user("ann")
    key = _token(Client(), "ann", "pw-ann").json()["token"]
    assert _api_status(key) == 200
    assert _token(Client(), "ann", "pw-ann").json()["token"] == key, "the same while valid"
    Token.objects.filter(key=key).update(
        created=Token.objects.get(key=key).created
        - timedelta(days=settings.API_TOKEN_DAYS, seconds=1)
    )
    response = Client().get("/api/v1/projects/", HTTP_AUTHORIZATION=f"Token {key}")
    assert response.status_code == 401
    assert "expired" in response.json()["error"]["message"]
    fresh = _token(Client(), "ann", "pw-ann").json()["token"]
    assert fresh != key and _api_status(fresh) == 200 and _api_status(key) == 401


def test_a_password_change_or_a_deactivation_revokes_the_token(
    make_user: Callable[..., User],
) -> None:
    ann = make_user("ann")
    key = _token(Client(), "ann", "pw-ann").json()["token"]
    ann.first_name = "Ann"
    ann.save()
    assert _api_status(key) == 200, "other changes keep it"
    ann.set_password("a-new-passphrase")
    ann.save()
    assert _api_status(key) == 401
    key = _token(Client(), "ann", "a-new-passphrase").json()["token"]
    ann.is_active = False
    ann.save(update_fields=["is_active"])
    assert _api_status(key) == 401
    assert not Token.objects.filter(user=ann).exists()


def test_seed_demo_refuses_without_debug(db: None, settings) -> None:
    settings.DEBUG = False
    with pytest.raises(CommandError, match="passwords are public"):
        call_command("seed_demo", verbosity=0)
    assert not User.objects.exists() and not Project.objects.exists()


def test_only_a_superuser_sets_the_base_model_and_trust_remote_code_in_the_admin(
    make_user: Callable[..., User], project: Project, caplog: pytest.LogCaptureFixture
) -> None:
    from django.contrib.auth.models import Permission

    staff = make_user("staff")
    staff.is_staff = True
    staff.save()
    staff.user_permissions.add(*Permission.objects.filter(codename__endswith="_project"))
    url = f"/admin/annotate/project/{project.pk}/change/"
    client = Client()
    client.force_login(staff)
    page = client.get(url).content.decode()
    assert 'name="base_model"' not in page and 'name="trust_remote_code"' not in page
    response = client.post(
        url, {**_admin_form(project), "base_model": "evil/model", "trust_remote_code": "on"}
    )
    assert response.status_code == 302, "the rest of the form saves"
    project.refresh_from_db()
    assert project.base_model != "evil/model" and not project.trust_remote_code

    root = make_user("root", superuser=True)
    client.force_login(root)
    page = client.get(url).content.decode()
    assert 'name="base_model"' in page and 'name="trust_remote_code"' in page
    with caplog.at_level(logging.WARNING, logger="annotate.admin"):
        response = client.post(url, {**_admin_form(project), "trust_remote_code": "on"})
    assert response.status_code == 302, response.content.decode()[:2000]
    project.refresh_from_db()
    assert project.trust_remote_code
    assert "trust_remote_code set to True by root" in caplog.text


def _admin_form(project: Project) -> dict[str, str]:
    """The admin's change form for the project as it stands (checkboxes: on, or absent)."""
    data = {}
    for name, value in model_to_dict(project).items():
        if isinstance(value, bool):
            if value:
                data[name] = "on"
        elif isinstance(value, list):
            data[name] = json.dumps(value)
        else:
            data[name] = str(value)
    return data
