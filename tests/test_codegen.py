"""The committed gRPC code is exactly what ``make proto`` generates from protos/."""

from __future__ import annotations

from pathlib import Path

from orchestrator.api import codegen

GENERATED = Path(codegen.__file__).parent / "_generated"


def test_generated_code_matches_the_proto(tmp_path: Path) -> None:
    written = codegen.generate(tmp_path)
    assert [p.name for p in written] == list(codegen._GENERATED)
    for path in written:
        committed = (GENERATED / path.name).read_text()
        assert path.read_text() == committed, f"{path.name} is stale: run `make proto`"
