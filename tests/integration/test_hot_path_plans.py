"""The judging hot path keeps to its indexes on PostgreSQL as the tables grow under it.

Its statements are prepared once per connection, and PostgreSQL keeps the generic plan it
makes at about the sixth execution. Made while a new project's lease table held a few rows,
that plan read the whole table, and kept reading it whole as it grew (with autovacuum off,
as on CI's server, nothing replans it): the queue walk cost 1.6 ms after 600 judgments and
6.3 ms after 1800. annotate/sql plans them with sequential scans off; this test grows the
table under a connection whose plans were made while it was small, and counts the scans.
"""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest
from django.contrib.auth.models import User
from django.db import DataError, connection, transaction
from django.utils import timezone

from annotate import sql
from annotate.models import Comparison, Lease, LeaseState, Project, Prompt
from annotate.queue import assignment_next
from annotate.selectors import annotator_progress
from annotate.services.judgments import judgment_submit
from tests.factories import comparison_make

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

COMPARISONS = 60
OTHER_ANNOTATORS = 150  # x COMPARISONS released leases: the grown table


def _judge(project: Project, annotator: User) -> None:
    """One annotator's submit-and-next as the page runs it."""
    assignment = assignment_next(project=project, annotator=annotator)
    assert assignment is not None
    judgment_submit(
        comparison_id=assignment.comparison.pk, annotator=annotator, project=project, side="left"
    )
    annotator_progress(project=project, annotator=annotator)


def _lease_scans() -> tuple[int, int]:
    """Sequential and index scans of the lease table so far (this backend's counts flushed)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")
        cursor.execute(
            "SELECT seq_scan, coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = %s",
            [Lease._meta.db_table],
        )
        seq, idx = cursor.fetchone()
    return int(seq), int(idx)


def test_queue_statements_use_indexes_after_the_lease_table_grows(
    real_services: None, project: Project, annotator: User
) -> None:
    prompts = list(Prompt.objects.filter(project=project, split="train"))
    comparisons = [comparison_make(prompts[i % len(prompts)], seed=i) for i in range(COMPARISONS)]

    # Statistics of a young project, as autovacuum gathers them after its first changes (and
    # the load bench after its bulk load): the lease table empty. A table never analysed is
    # taken to be ten pages, which would hide the trap.
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    # Every hot statement runs well past the executions after which PostgreSQL settles on a
    # generic plan, while the lease table holds a handful of rows.
    for _ in range(10):
        _judge(project, annotator)
    assert Lease.objects.count() <= 12

    # The table grows under the same connection: other annotators' finished leases.
    others = User.objects.bulk_create(
        [User(username=f"other{i:03d}") for i in range(OTHER_ANNOTATORS)]
    )
    expired = timezone.now() - timedelta(hours=1)
    Lease.objects.bulk_create(
        [
            Lease(comparison=c, annotator=u, state=LeaseState.RELEASED, expires_at=expired)
            for c in comparisons
            for u in others
        ],
        batch_size=2000,
    )
    assert Lease.objects.count() >= COMPARISONS * OTHER_ANNOTATORS

    seq_before, idx_before = _lease_scans()
    for _ in range(5):
        _judge(project, annotator)
    seq_after, idx_after = _lease_scans()

    # The five cycles did read leases (through their indexes), and never the whole table.
    assert idx_after - idx_before >= 5
    assert seq_after - seq_before == 0
    assert Comparison.objects.filter(project=project, judgment_count=1).count() == 15


def test_a_failed_statement_outside_a_transaction_leaves_the_connection_usable(
    real_services: None,
) -> None:
    # Outside Django's transactions a statement runs in a BEGIN ... COMMIT of its own (the
    # setting needs a transaction): its failure must not leave that transaction open.
    with pytest.raises(DataError, match="division by zero"):
        sql.one("SELECT 1 / %s", [0])
    assert connection.connection is not None
    assert connection.connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert sql.one("SELECT current_setting('enable_seqscan'), 1 / %s", [1]) == ("off", 1)
    with connection.cursor() as cursor:  # the ORM's statements keep the server's settings
        cursor.execute("SHOW enable_seqscan")
        assert cursor.fetchone() == ("on",)


def test_a_judging_transaction_plans_its_statements_even_when_the_orm_goes_first(
    real_services: None, project: Project
) -> None:
    # Undo, adjudication and gold changes read with the ORM before the hot path's statements
    # run: the transaction they open with sql.atomic() still plans those with the indexes.
    with sql.atomic():
        assert Project.objects.filter(pk=project.pk).exists()
        assert sql.one("SELECT current_setting('enable_seqscan'), %s", [1]) == ("off", 1)
    # Outside it, a transaction the ORM opened keeps the server's settings for everything.
    with transaction.atomic():
        assert Project.objects.filter(pk=project.pk).exists()
        assert sql.one("SELECT current_setting('enable_seqscan'), %s", [1]) == ("on", 1)
