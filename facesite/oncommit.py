"""Run an action once after the current transaction commits, for everything gathered during it.

An erasure deletes a person and all their photos, the admin's bulk delete many photos: what must
follow each deletion (a file rewritten, a task queued) is done once per transaction, not once per
row. Every call registers the same batch with ``transaction.on_commit``, so the batch runs if any of
the calls' work survives; items gathered in a part that was rolled back (a savepoint) may be in it
too, so an action checks what really happened (which rows are gone) before it acts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from django.db import transaction


class _Batch:
    def __init__(self, action: Callable[[set], None]):
        self.action = action
        self.items: set = set()
        self.done = False

    def __call__(self):
        if not self.done:
            self.done = True
            self.action(self.items)


_local = threading.local()


def after_commit_once(action: Callable[[set], None], items: Iterable) -> None:
    """Gather ``items`` for ``action``; ``action(every item gathered)`` runs once when the current
    transaction commits (at once outside a transaction). Per thread, as transactions are."""
    batches = _local.__dict__.setdefault("batches", {})
    batch = batches.get(action)
    if batch is None or batch.done:
        batch = batches[action] = _Batch(action)
    batch.items.update(items)
    transaction.on_commit(batch)
