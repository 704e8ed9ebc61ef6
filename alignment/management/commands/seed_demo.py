from __future__ import annotations

import getpass
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from alignment.models import Round
from alignment.services.model_versions import model_version_base_ensure
from alignment.services.rounds import SamplingSettings, round_prompts_choose, round_start
from annotate.demo_data import demo_guidelines, demo_prompts
from annotate.models import Project, Role
from annotate.services.projects import membership_set, project_create
from annotate.services.prompts import prompts_create

DEMO_SLUG = "demo"
ADMIN = "lead"  # the account that is also the site's admin (/admin/)
ACCOUNTS = [
    ("lead", "prefloop-lead", Role.LEAD),
    ("annotator1", "prefloop-annotator1", Role.ANNOTATOR),
    ("annotator2", "prefloop-annotator2", Role.ANNOTATOR),
    ("reviewer", "prefloop-reviewer", Role.REVIEWER),
]


class Command(BaseCommand):
    help = (
        "Seed the demo project (guidelines, the built-in prompt bank, a lead, two annotators "
        "and a reviewer) "
        "and queue round 1 generation. Safe to re-run: existing data is kept. The demo's "
        "passwords are public (README): without DEBUG it refuses, unless --ask-passwords."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--round-prompts", type=int, default=48, help="Training prompts in round 1."
        )
        parser.add_argument("--max-new-tokens", type=int, default=200)
        parser.add_argument(
            "--ask-passwords",
            action="store_true",
            help="Ask for each new account's password instead of using the public ones.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        ask = options["ask_passwords"]
        if not settings.DEBUG and not ask:
            raise CommandError(
                "seed_demo creates accounts whose passwords are public (README), and DEBUG is "
                "off, so this may be a production database. For a demo run it with DEBUG=1; "
                "to seed the demo here anyway, pass --ask-passwords and type the passwords."
            )
        passwords = {username: password for username, password, _role in ACCOUNTS}
        if ask:
            for username in passwords:
                if not User.objects.filter(username=username).exists():
                    passwords[username] = self._password_ask(username)
        with transaction.atomic():
            users = {}
            for username, _public, _role in ACCOUNTS:
                password = passwords[username]
                user, created = User.objects.get_or_create(username=username)
                if created:
                    user.set_password(password)
                    user.save(update_fields=["password"])
                if username == ADMIN and not user.is_superuser:
                    # The demo's lead also opens /admin/ (a demo has nobody else to).
                    user.is_staff = user.is_superuser = True
                    user.save(update_fields=["is_staff", "is_superuser"])
                users[username] = user
            project = Project.objects.filter(slug=DEMO_SLUG).first()
            if project is None:
                project = project_create(
                    name="Demo: helpful, honest, harmless",
                    slug=DEMO_SLUG,
                    guidelines=demo_guidelines(),
                    created_by=users["lead"],
                    description="A demo project seeded by `make demo`.",
                    overlap=2,
                    criteria=["helpfulness", "honesty", "harmlessness"],
                    reason_tags=["substance", "correctness", "safety", "style/format", "length"],
                    swap_recheck_rate=0.05,
                )
                prompts_create(project=project, rows=demo_prompts())
                self.stdout.write(
                    f"Created project {project.slug!r} with {project.prompts.count()} prompts."
                )
            else:
                self.stdout.write(f"Project {project.slug!r} exists; keeping its data.")
            for username, _password, role in ACCOUNTS:
                membership_set(project=project, user=users[username], role=role)
            if not Round.objects.filter(project=project).exists():
                base = model_version_base_ensure(project=project)
                round_ = round_start(
                    project=project,
                    policy=base,
                    train_prompts=round_prompts_choose(
                        project=project, count=options["round_prompts"]
                    ),
                    samples_per_prompt=2,
                    sampling=SamplingSettings(max_new_tokens=options["max_new_tokens"]),
                    created_by=users["lead"],
                )
                self.stdout.write(
                    f"Queued round {round_.number} generation ({round_.prompts.count()} prompts)."
                )
        if ask:
            self.stdout.write("Accounts: " + ", ".join(username for username, *_ in ACCOUNTS))
            return
        self.stdout.write("Accounts (username / password):")
        for username, password, role in ACCOUNTS:
            admin = ", and the site admin at /admin/" if username == ADMIN else ""
            self.stdout.write(f"  {username} / {password}  ({role.label.lower()}{admin})")

    def _password_ask(self, username: str) -> str:
        while True:
            password = getpass.getpass(f"Password for {username}: ")
            try:
                validate_password(password)
            except ValidationError as error:
                self.stderr.write(" ".join(error.messages))
                continue
            if password in {public for _name, public, _role in ACCOUNTS}:
                self.stderr.write("That is one of the demo's public passwords.")
                continue
            return password
