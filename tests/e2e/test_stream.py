"""StreamEvents: every payment event in commit order, resumable, and following live."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from orchestrator.api._generated import payments_pb2 as pb
from tests.e2e.conftest import Running
from tests.e2e.helpers import create_request, error_reason


def stream(running: Running, after: int = 0) -> list[pb.StreamedEvent]:
    return list(running.stub.StreamEvents(pb.StreamEventsRequest(after_position=after)))


def make_payments(running: Running, count: int, prefix: str = "s") -> list[str]:
    ids = []
    for i in range(count):
        payment = running.stub.CreatePayment(create_request(f"{prefix}-{i}"))
        running.stub.CapturePayment(
            pb.CapturePaymentRequest(
                idempotency_key=f"{prefix}-c{i}", payment_id=payment.payment_id
            )
        )
        ids.append(payment.payment_id)
    return ids


def test_streaming_from_zero_gives_every_payment_event_in_commit_order(running: Running) -> None:
    ids = make_payments(running, 3)
    events = stream(running)
    positions = [e.position for e in events]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    assert {e.payment_id for e in events} == set(ids)
    for pid in ids:
        mine = [e.event for e in events if e.payment_id == pid]
        listed = running.stub.ListPaymentEvents(pb.ListPaymentEventsRequest(payment_id=pid)).events
        assert [(e.version, e.type, e.data) for e in mine] == [
            (e.version, e.type, e.data) for e in listed
        ]
    assert {e.event.type for e in events} >= {
        "Requested",
        "OperationStarted",
        "Authorized",
        "Captured",
    }


def test_streaming_from_a_middle_position_gives_exactly_what_follows(running: Running) -> None:
    make_payments(running, 3)
    everything = stream(running)
    middle = everything[len(everything) // 2].position
    rest = stream(running, after=middle)
    assert [e.position for e in rest] == [e.position for e in everything if e.position > middle]


def test_following_streams_new_events_and_a_reconnect_neither_skips_nor_repeats(
    running: Running,
) -> None:
    make_payments(running, 2, prefix="before")
    seen: list[pb.StreamedEvent] = []
    call = running.stub.StreamEvents(pb.StreamEventsRequest(after_position=0, follow=True))

    def consume() -> None:
        try:
            for event in call:
                seen.append(event)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.CANCELLED  # type: ignore[attr-defined]

    reader = threading.Thread(target=consume)
    reader.start()
    make_payments(running, 3, prefix="during")
    deadline = time.monotonic() + 10
    expected = len(stream(running))
    while len(seen) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    call.cancel()
    reader.join(5)
    assert len(seen) == expected
    # Reconnect from the last position seen while more payments are made.
    make_payments(running, 2, prefix="after")
    resumed = stream(running, after=seen[-1].position)
    combined = [e.position for e in seen + resumed]
    assert combined == [e.position for e in stream(running)]


def test_a_negative_position_is_invalid(running: Running) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        stream(running, after=-1)
    assert error_reason(refused.value) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_POSITION")
