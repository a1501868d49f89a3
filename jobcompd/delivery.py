"""What a delivery report means for its record: the plugin's rules, with nothing discarded.

A pure function of the report's error and the settings, so the table below is tested as a table
(tests/test_delivery.py), not only through a broker. :class:`jobcompd.producer.Sender` applies it.

==========================  ================================  ====================================
event                       the plugin                        jobcompd
==========================  ================================  ====================================
delivered                   debug log                         record leaves the spool (id kept)
``_MSG_TIMED_OUT``          produce again if                  produce again if
                            ``requeue_on_msg_timeout``,       ``requeue_on_msg_timeout``, else
                            else discard                      dead letter with the reason
other delivery error        discard                           dead letter with the reason
message too large/refused   discard                           dead letter with the reason
purged by jobcompd          (shutdown: state file)            stays spooled, sent again
the idempotent producer's   (fatal: the plugin stops)         stays spooled; the producer is
own state fails (fatal)                                       rebuilt and sends it again
==========================  ================================  ====================================
"""

from __future__ import annotations

from enum import Enum

from confluent_kafka import KafkaError

__all__ = ["Outcome", "outcome"]


class Outcome(Enum):
    """What becomes of a record after its delivery report."""

    DELIVERED = "delivered"  # leaves the spool
    KEEP = "keep"  # stays spooled: purged by jobcompd itself, sent again later
    REBUILD = "rebuild"  # stays spooled; the producer must be rebuilt first
    REQUEUE = "requeue"  # produced again now
    DEAD_LETTER = "dead letter"  # taken out of the send loop, with the reason


# Reported for messages we purged ourselves (shutdown, producer rebuild): they stay in the spool.
PURGED = frozenset((KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT))
# Failures of the idempotent producer's own state, not of the record: the producer is rebuilt
# and the record, still in the spool, is sent again by the new one.
PRODUCER_STATE = frozenset(
    (
        KafkaError._FATAL,
        KafkaError._INCONSISTENT,
        KafkaError._GAPLESS_GUARANTEE,
        KafkaError._FENCED,
        KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
        KafkaError.UNKNOWN_PRODUCER_ID,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.INVALID_PRODUCER_ID_MAPPING,
        KafkaError.PRODUCER_FENCED,
    )
)


def outcome(error: KafkaError | None, *, requeue_on_msg_timeout: bool, rebuilding: bool = False) -> Outcome:
    """The fate of a record whose delivery report carries ``error`` (None: delivered).

    ``rebuilding``: the producer is already being replaced, so every failure waits for the new one.
    """
    if error is None:
        return Outcome.DELIVERED
    code = error.code()
    if code in PURGED:
        return Outcome.KEEP
    if code in PRODUCER_STATE or error.fatal() or rebuilding:
        return Outcome.REBUILD
    if code == KafkaError._MSG_TIMED_OUT and requeue_on_msg_timeout:
        return Outcome.REQUEUE
    return Outcome.DEAD_LETTER
