"""The committed gRPC code is exactly what ``make proto`` generates from protos/: the server's
copy and the client distribution's."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.api import codegen


def test_the_client_distribution_has_a_copy_to_check() -> None:
    assert [t.relative_to(codegen.REPO_ROOT).as_posix() for t in codegen.TARGETS] == [
        "orchestrator/api/_generated",
        "clients/python/payorch_client/_generated",
    ]


@pytest.mark.parametrize("committed", codegen.TARGETS, ids=lambda t: t.parent.name)
def test_generated_code_matches_the_proto(committed: Path, tmp_path: Path) -> None:
    written = codegen.generate(tmp_path)
    assert [p.name for p in written] == list(codegen._GENERATED)
    for path in written:
        target = committed / path.name
        assert target.exists(), f"{target} is missing: run `make proto`"
        assert path.read_text() == target.read_text(), f"{target} is stale: run `make proto`"
