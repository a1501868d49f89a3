"""The delivery-report table of jobcompd.delivery, row by row, without a broker."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError

from jobcompd.delivery import PRODUCER_STATE, Outcome, outcome

E = KafkaError


@pytest.mark.parametrize(
    ("error", "requeue", "expected"),
    [
        (None, False, Outcome.DELIVERED),
        (None, True, Outcome.DELIVERED),
        (E(E._MSG_TIMED_OUT), True, Outcome.REQUEUE),
        (E(E._MSG_TIMED_OUT), False, Outcome.DEAD_LETTER),  # the plugin discards it
        (E(E.MSG_SIZE_TOO_LARGE), True, Outcome.DEAD_LETTER),
        (E(E.TOPIC_AUTHORIZATION_FAILED), True, Outcome.DEAD_LETTER),
        (E(E.UNKNOWN_TOPIC_OR_PART), False, Outcome.DEAD_LETTER),
        (E(E.INVALID_RECORD), False, Outcome.DEAD_LETTER),
        (E(E._PURGE_QUEUE), False, Outcome.KEEP),
        (E(E._PURGE_INFLIGHT), True, Outcome.KEEP),
        (E(E._FATAL), False, Outcome.REBUILD),
        (E(E.OUT_OF_ORDER_SEQUENCE_NUMBER), True, Outcome.REBUILD),
        (E(E.UNKNOWN_PRODUCER_ID), False, Outcome.REBUILD),
        (E(E.MSG_SIZE_TOO_LARGE, fatal=True), False, Outcome.REBUILD),  # any fatal error
    ],
    ids=lambda v: v.name() if isinstance(v, KafkaError) else str(v),
)
def test_the_table(error: KafkaError | None, requeue: bool, expected: Outcome) -> None:
    assert outcome(error, requeue_on_msg_timeout=requeue) is expected


def test_while_the_producer_is_rebuilt_every_failure_waits_for_the_new_one() -> None:
    for code in (E._MSG_TIMED_OUT, E.MSG_SIZE_TOO_LARGE):
        assert outcome(E(code), requeue_on_msg_timeout=True, rebuilding=True) is Outcome.REBUILD
    assert outcome(None, requeue_on_msg_timeout=True, rebuilding=True) is Outcome.DELIVERED
    assert outcome(E(E._PURGE_QUEUE), requeue_on_msg_timeout=True, rebuilding=True) is Outcome.KEEP


def test_a_report_with_an_error_never_counts_as_delivered() -> None:
    """Whatever error code librdkafka reports, the record stays held (spooled or dead-lettered)."""
    codes = [getattr(E, name) for name in dir(E) if name.isupper() or name.startswith("_") and name[1:].isupper()]
    codes = [c for c in codes if isinstance(c, int)]
    assert len(codes) > 100 and set(PRODUCER_STATE) <= set(codes)
    for code in codes:
        for requeue in (False, True):
            assert outcome(E(code), requeue_on_msg_timeout=requeue) in set(Outcome) - {Outcome.DELIVERED}
