"""The client names every outcome an operator may record, as the CLI does."""

from __future__ import annotations

from payorch_client import client
from payorch_client._generated import payments_pb2 as pb

from orchestrator.cli import OUTCOMES


def test_every_resolution_of_the_api_has_a_name_in_the_client() -> None:
    named = set(client._OUTCOMES.values())
    assert named == set(pb.Resolution.values()) - {pb.RESOLUTION_UNSPECIFIED}


def test_the_client_and_the_cli_use_the_same_names() -> None:
    assert set(client._OUTCOMES) == set(OUTCOMES)
