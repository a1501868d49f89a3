"""The loop of every record sent (jobcompd/sendloop.py) and its compiled twin (jobcompd/_sendloop.c).

The Python loop is the reference: its rules are tested on their own, and the compiled loop must do
what it does, call for call, on the same backlogs — including when ``produce()`` refuses a record.
"""

from __future__ import annotations

import gc
import importlib
import sys
import time
import weakref
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer
from hypothesis import given, settings
from hypothesis import strategies as st

from jobcompd import sendloop
from jobcompd.sendloop import python_produce_records
from jobcompd.state import SpooledRecord

HEADER = "record_id"
LOOPS = [pytest.param(python_produce_records, id="python")]
compiled_only = pytest.mark.skipif(
    sendloop.SEND_LOOP != "compiled", reason=f"the compiled send loop is not in use: {sendloop.SEND_LOOP}"
)
if sendloop.SEND_LOOP == "compiled":
    LOOPS.append(pytest.param(importlib.import_module("jobcompd._sendloop").produce_records, id="compiled"))


class Produce:
    """A stand-in for ``Producer.produce`` that keeps its calls and refuses the ``fail_at``-th."""

    def __init__(self, fail_at: int | None = None, error: BaseException | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail_at, self.error = fail_at, error

    def __call__(self, *args: Any) -> None:
        if len(self.calls) == self.fail_at:
            assert self.error is not None
            raise self.error
        # The header list as it was at the call (a loop may reuse nothing it handed over).
        self.calls.append((*args[:7], [tuple(h) for h in args[7]]))


def records(sizes: list[int]) -> list[SpooledRecord]:
    return [
        SpooledRecord(10_000 + i, f"{i:032x}", 70_000 + i, b"p" * size, "log", 0.0, 0, None)
        for i, size in enumerate(sizes)
    ]


def run(loop: Any, backlog: list[SpooledRecord], end: int, budget: int, produce: Produce,
        in_flight: dict[str, Any] | None = None) -> tuple[tuple[int, int, BaseException | None], dict[str, Any]]:
    in_flight = {} if in_flight is None else in_flight
    result = loop(produce, "jobs", 3, backlog, end, budget, in_flight, HEADER)
    return result, in_flight


@pytest.mark.parametrize("loop", LOOPS)
def test_records_go_from_the_end_of_the_backlog_in_turn_until_end_are_left(loop: Any) -> None:
    spooled = records([5, 6, 7, 8])
    backlog = list(reversed(spooled))  # pop() from the end keeps spool order
    produce = Produce()
    (sent, size, error), in_flight = run(loop, backlog, 1, 1_000, produce)
    assert (sent, size, error) == (3, 5 + 6 + 7, None)
    assert backlog == [spooled[3]]
    assert produce.calls == [
        ("jobs", r.payload, r.rid, 3, None, None, 0, [(HEADER, r.rid)]) for r in spooled[:3]
    ]
    assert in_flight == {r.rid: (r.seq, r.jobid, len(r.payload)) for r in spooled[:3]}


@pytest.mark.parametrize("loop", LOOPS)
def test_the_budget_stops_the_loop_once_reached_not_before_the_record_that_passes_it(loop: Any) -> None:
    spooled = records([5, 6, 7])
    backlog = list(reversed(spooled))
    (sent, size, error), _ = run(loop, backlog, 0, 8, Produce())
    assert (sent, size, error) == (2, 11, None)  # 5 < 8, so the second goes too; 11 >= 8 stops
    assert run(loop, backlog, 0, 0, Produce())[0] == (0, 0, None)
    assert run(loop, backlog, 0, -3, Produce())[0] == (0, 0, None)
    assert backlog == [spooled[2]]


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize(
    "error",
    [BufferError("Local: Queue full"), KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)),
     RuntimeError("a bug"), KeyboardInterrupt()],
    ids=["buffer", "kafka", "bug", "interrupt"],
)
def test_a_refusal_is_returned_with_its_record_left_at_the_end_and_the_ones_before_counted(
    loop: Any, error: BaseException
) -> None:
    spooled = records([5, 6, 7])
    backlog = list(reversed(spooled))
    (sent, size, got), in_flight = run(loop, backlog, 0, 1_000, Produce(fail_at=1, error=error))
    assert (sent, size) == (1, 5) and got is error
    assert backlog == [spooled[2], spooled[1]]  # the refused record is next
    assert list(in_flight) == [spooled[0].rid]


@compiled_only
@settings(max_examples=300, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40), max_size=25),
    end=st.integers(0, 30),
    budget=st.integers(-5, 400),
    fail_at=st.none() | st.integers(0, 25),
    kind=st.sampled_from([BufferError, KafkaException, ValueError]),
    known=st.integers(0, 3),
)
def test_the_compiled_loop_does_what_the_python_loop_does(
    sizes: list[int], end: int, budget: int, fail_at: int | None, kind: type[BaseException], known: int
) -> None:
    compiled = importlib.import_module("jobcompd._sendloop").produce_records
    spooled = records(sizes)
    answers = []
    for loop in (python_produce_records, compiled):
        error = kind(KafkaError(KafkaError._QUEUE_FULL)) if kind is KafkaException else kind("refused")
        produce = Produce(fail_at, error)
        backlog = list(reversed(spooled))
        in_flight = {f"{i:x}": (i, i, i) for i in range(known)}  # records in flight before this call
        (sent, size, got), in_flight = run(loop, backlog, end, budget, produce, in_flight)
        answers.append((sent, size, got is error, got is None, produce.calls, backlog, list(in_flight.items())))
    assert answers[0] == answers[1]


@compiled_only
def test_the_compiled_loop_keeps_no_reference_it_does_not_hand_over() -> None:
    compiled = importlib.import_module("jobcompd._sendloop").produce_records
    spooled = records([300, 400, 500])
    fields = [(r.seq, r.rid, r.jobid, r.payload) for r in spooled]
    before = [tuple(sys.getrefcount(x) for x in f) for f in fields]
    backlog = list(reversed(spooled))
    produce = Produce(fail_at=2, error=BufferError("full"))
    (sent, _, error), in_flight = run(compiled, backlog, 0, 10_000, produce)
    assert sent == 2 and isinstance(error, BufferError)
    produce.calls.clear()
    # The refusal's traceback holds the stand-in's frame, and so the arguments of the refused call
    # (in a cycle: the frame holds the stand-in, which holds the refusal).
    del error
    produce.error = None
    gc.collect()
    after = [tuple(sys.getrefcount(x) for x in f) for f in fields]
    # The records handed over: seq, rid (its key) and jobid held once more, by in_flight; the
    # refused one and every payload: as before.
    assert after[:2] == [(s + 1, r + 1, j + 1, p) for s, r, j, p in before[:2]]
    assert after[2] == before[2]
    del in_flight
    assert [tuple(sys.getrefcount(x) for x in f) for f in fields] == before


@pytest.mark.parametrize("loop", LOOPS)
def test_with_confluent_kafka_a_full_queue_stops_the_loop_at_the_record_it_refused(loop: Any) -> None:
    # A real producer with no broker to reach: librdkafka queues three messages, then refuses.
    producer = Producer({"bootstrap.servers": "127.0.0.1:1", "queue.buffering.max.messages": 3,
                         "log_level": 0, "on_delivery": lambda error, message: None})
    try:
        spooled = records([50] * 5)
        backlog = list(reversed(spooled))
        (sent, size, error), in_flight = run(loop, backlog, 0, 10_000, Produce())
        assert sent == 5  # the stand-in takes all; now librdkafka's own produce()
        backlog = list(reversed(spooled))
        in_flight = {}
        sent, size, error = loop(producer.produce, "jobs", -1, backlog, 0, 10_000, in_flight, HEADER)
        assert (sent, size, type(error)) == (3, 150, BufferError)
        assert backlog == [spooled[4], spooled[3]]
        assert list(in_flight) == [r.rid for r in spooled[:3]]
    finally:
        producer.purge()
        producer.flush(1)


# -- delivery reports and settling ---------------------------------------------------------------

REPORTS = [pytest.param(sendloop.PythonReports, id="python")]
SETTLING = [pytest.param((sendloop.python_delivered_pairs, sendloop.python_forget), id="python")]
if sendloop.SEND_LOOP == "compiled":
    _compiled = importlib.import_module("jobcompd._sendloop")
    REPORTS.append(pytest.param(_compiled.Reports, id="compiled"))
    SETTLING.append(pytest.param((_compiled.delivered_pairs, _compiled.forget), id="compiled"))


class Message:
    """What a report's message gives the collector: its key."""

    def __init__(self, key: bytes | None) -> None:
        self._key = key

    def key(self) -> bytes | None:
        return self._key


@pytest.mark.parametrize("make", REPORTS)
def test_reports_keep_the_key_of_a_delivery_and_the_whole_of_a_failure_and_when_the_first_came(
    make: Any,
) -> None:
    reports = make()
    assert (reports.delivered, reports.failed) == ([], [])
    before = time.monotonic()
    reports(None, Message(b"a"))
    after = time.monotonic()
    assert before <= reports.since <= after
    error, failed = KafkaError(KafkaError._MSG_TIMED_OUT), Message(b"b")
    time.sleep(0.01)
    reports(error, failed)
    reports(None, Message(None))
    assert before <= reports.since <= after  # the first report's time, until the lists are taken
    assert reports.delivered == [b"a", None]
    assert reports.failed == [(error, failed)] and reports.failed[0][1] is failed
    taken = reports.delivered
    reports.delivered, reports.failed = [], []
    assert taken == [b"a", None]  # the lists taken stay as they were
    reports(None, Message(b"c"))
    assert reports.since >= after + 0.01 and reports.delivered == [b"c"]


@pytest.mark.parametrize("make", REPORTS)
def test_reports_let_go_of_a_delivered_message_at_once(make: Any) -> None:
    reports = make()
    message = Message(b"k")
    gone = weakref.ref(message)
    reports(None, message)
    del message
    assert gone() is None


@compiled_only
def test_the_compiled_reports_take_lists_only_and_no_keywords() -> None:
    reports = importlib.import_module("jobcompd._sendloop").Reports()
    for bad in (None, (), "x"):
        with pytest.raises(TypeError):
            reports.delivered = bad
        with pytest.raises(TypeError):
            reports.failed = bad
    with pytest.raises(TypeError):
        reports(None)
    with pytest.raises(TypeError):
        reports(error=None, message=Message(b"a"))
    with pytest.raises(AttributeError):
        reports(None, object())  # a message without key()
    assert reports.delivered == []
    bare = type(reports).__new__(type(reports))  # never initialized: an error, not a crash
    with pytest.raises(AttributeError):
        _ = bare.delivered
    with pytest.raises(RuntimeError):
        bare(None, Message(b"a"))


@pytest.mark.parametrize("twins", SETTLING)
def test_reports_all_delivered_of_records_in_flight_become_seq_and_jobid_pairs(twins: Any) -> None:
    pairs, forget = twins
    in_flight = {"a": (1, 100, 10), "b": (2, 200, 20), "c": (3, 300, 30)}
    assert pairs([b"c", b"a"], in_flight, set()) == ([(3, 300), (1, 100)], ["c", "a"])
    assert len(in_flight) == 3  # nothing taken yet: the state settles them first
    assert pairs([], in_flight, set()) == ([], [])
    assert pairs([b"a", None], in_flight, set()) is None  # a report without a key
    assert pairs([b"a", b"x"], in_flight, set()) is None  # not in flight here
    assert pairs([b"a", b"b"], in_flight, {"b"}) is None  # sent early: waits for its batch
    assert pairs([b"a"], in_flight, {"b"}) == ([(1, 100)], ["a"])
    assert forget(in_flight, ["c", "a"]) == 40 and in_flight == {"b": (2, 200, 20)}
    with pytest.raises(KeyError):
        forget(in_flight, ["a"])


@compiled_only
@settings(max_examples=300, deadline=None)
@given(
    flight=st.dictionaries(st.text("abcdef0123", min_size=1, max_size=4),
                           st.tuples(st.integers(1, 10**12), st.integers(0, 2**32), st.integers(0, 10**6)),
                           max_size=12),
    extra=st.lists(st.text("abcdefxyz", min_size=1, max_size=4), max_size=3),
    early_share=st.integers(0, 3),
    nones=st.integers(0, 2),
    data=st.data(),
)
def test_the_compiled_settling_does_what_the_python_settling_does(
    flight: dict[str, tuple[int, int, int]], extra: list[str], early_share: int, nones: int, data: Any
) -> None:
    compiled = importlib.import_module("jobcompd._sendloop")
    rids = data.draw(st.lists(st.sampled_from([*flight, *extra]), unique=True)) if flight or extra else []
    keys: list[bytes | None] = [r.encode() for r in rids] + [None] * nones
    keys = data.draw(st.permutations(keys))
    early = {r for i, r in enumerate(flight) if early_share and i % (4 - early_share) == 0}
    expected = sendloop.python_delivered_pairs(keys, dict(flight), early)
    assert compiled.delivered_pairs(keys, dict(flight), early) == expected
    if expected is not None:
        mine, theirs = dict(flight), dict(flight)
        assert compiled.forget(mine, expected[1]) == sendloop.python_forget(theirs, expected[1])
        assert mine == theirs


# -- the channel (compiled only): librdkafka's plugin, the client it is given, its reports --------


@compiled_only
def test_a_channel_knows_the_client_of_the_producer_made_with_it_until_that_is_gone() -> None:
    made, properties = sendloop.channel()
    other, _ = sendloop.channel()
    assert made.id != other.id and properties[sendloop.CHANNEL_PROPERTY] == str(made.id)
    assert not made.connected
    producer = Producer({**properties, "bootstrap.servers": "127.0.0.1:9"})
    assert made.connected and not other.connected
    assert made.take(sendloop.Reports()) == []  # nothing produced, nothing reported
    del producer
    gc.collect()
    assert not made.connected
    with pytest.raises(RuntimeError, match="no librdkafka client"):
        made.produce_records(None, "jobs", -1, records([10]), 0, 100, {}, HEADER)


@compiled_only
def test_the_channels_plugin_refuses_a_channel_property_that_names_none() -> None:
    made, properties = sendloop.channel()
    with pytest.raises(KafkaException, match="jobcompd.channel must be a channel number"):
        Producer({**properties, sendloop.CHANNEL_PROPERTY: "one", "bootstrap.servers": "127.0.0.1:9"})
    # A channel that is gone (or never was) leaves the producer to confluent-kafka's produce().
    Producer({**properties, sendloop.CHANNEL_PROPERTY: "999999", "bootstrap.servers": "127.0.0.1:9"})
    assert not made.connected


@compiled_only
def test_records_through_a_channel_leave_the_backlog_in_flight_as_with_produce() -> None:
    """The channel's loop keeps the Python loop's rules: from the end of the backlog, down to
    ``end`` or past ``budget``, each entered in flight; what librdkafka refuses stops it."""
    made, properties = sendloop.channel()
    producer = Producer({**properties, "bootstrap.servers": "127.0.0.1:9", "queue.buffering.max.messages": "3"})
    backlog = records([10, 20, 30, 40, 50, 60])
    in_flight: dict[str, Any] = {}
    assert made.produce_records(producer, "jobs", -1, backlog, 4, 10**6, in_flight, HEADER) == (2, 110, None)
    assert [r.seq for r in backlog] == [10_000, 10_001, 10_002, 10_003]
    assert in_flight == {f"{5:032x}": (10_005, 70_005, 60), f"{4:032x}": (10_004, 70_004, 50)}
    sent, size, refused = made.produce_records(producer, "jobs", -1, backlog, 0, 10**6, in_flight, HEADER)
    assert (sent, size) == (1, 40) and refused[0] == KafkaError._QUEUE_FULL  # 3 in librdkafka's queue
    assert isinstance(sendloop.refusal_error(refused), BufferError)
    assert len(backlog) == 3 and len(in_flight) == 3
    bad = [("not", "a", "record")]
    _, _, error = made.produce_records(producer, "jobs", -1, bad, 0, 10**6, {}, HEADER)
    assert isinstance(error, TypeError) and bad == [("not", "a", "record")]
    producer.purge()
    producer.poll(0)
    reports = sendloop.Reports()
    failed = made.take(reports)
    assert reports.delivered == [] and sorted(f[1] for f in failed) == [f"{i:032x}".encode() for i in (3, 4, 5)]
    assert {f[0] for f in failed} == {KafkaError._PURGE_QUEUE}
    assert sorted(len(f[2]) for f in failed) == [40, 50, 60]  # a failure keeps its payload


@compiled_only
def test_a_record_librdkafka_refuses_through_a_channel_leaves_no_report_behind(mock_cluster: Any) -> None:
    """librdkafka also tells its interceptors of a record its partitioner refuses: that refusal is
    returned, and no report of it is kept (it would be taken for the report of the same record
    produced again later)."""
    mock_cluster.create_topic("jobs", 2)
    made, properties = sendloop.channel()
    producer = Producer({**properties, "bootstrap.servers": mock_cluster.bootstrap})
    assert len(producer.list_topics("jobs", timeout=10).topics["jobs"].partitions) == 2
    backlog = records([10, 20])
    sent, _, refused = made.produce_records(producer, "jobs", 7, backlog, 0, 10**6, {}, HEADER)
    assert sent == 0 and refused[0] == KafkaError._UNKNOWN_PARTITION and len(backlog) == 2
    in_flight: dict[str, Any] = {}
    assert made.produce_records(producer, "jobs", 1, backlog, 0, 10**6, in_flight, HEADER)[:2] == (2, 30)
    assert producer.flush(10) == 0
    reports = sendloop.Reports()
    assert made.take(reports) == []  # no failure: the refusal was returned, not kept
    assert sorted(reports.delivered) == sorted(rid.encode() for rid in in_flight)
