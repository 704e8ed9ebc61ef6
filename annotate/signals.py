"""What annotate tells the apps built on it, which it must not import (alignment → annotate)."""

from __future__ import annotations

from django.dispatch import Signal

# Sent when a comparison's live judgments decide its pair (a preference, a tie or both bad),
# inside the transaction that decided it, with `comparison` and `pair`: a receiver's writes
# commit or roll back with the judgment. Sent again when the pair is decided afresh (an undo
# and a new vote, an adjudication): receivers must be idempotent.
pair_decided = Signal()
