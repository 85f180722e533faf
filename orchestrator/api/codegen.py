"""Generates the gRPC Python code from ``protos/`` (``make proto``).

protoc writes absolute imports (``from payments.v1 import payments_pb2``) that would need a
top-level ``payments`` package; we rewrite them to relative imports so the generated code lives
inside ``orchestrator.api._generated``. A test regenerates into a temporary folder and compares,
so the committed code never drifts from the .proto.

The same code is committed twice: here, for the server, and in the client distribution
(``clients/python/payorch_client/_generated``), which must install without the server.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "protos"
# Every committed copy of the generated code: ``make proto`` writes each, a test checks each.
TARGETS = (
    REPO_ROOT / "orchestrator" / "api" / "_generated",
    REPO_ROOT / "clients" / "python" / "payorch_client" / "_generated",
)
PROTO_FILES = ("payments/v1/payments.proto",)
_GENERATED = ("payments_pb2.py", "payments_pb2.pyi", "payments_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    from grpc_tools import protoc  # dev dependency: only code generation needs it

    work = out_dir / "_protoc"
    work.mkdir(parents=True, exist_ok=True)
    well_known = str(resources.files("grpc_tools") / "_proto")
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={work}",
        f"--pyi_out={work}",
        f"--grpc_python_out={work}",
        *PROTO_FILES,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    written = []
    for name in _GENERATED:
        text = (work / "payments" / "v1" / name).read_text()
        text = text.replace("from payments.v1 import", "from . import")
        target = out_dir / name
        target.write_text(text)
        written.append(target)
    for path in sorted(work.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    work.rmdir()
    return written


if __name__ == "__main__":
    for target in [Path(arg) for arg in sys.argv[1:]] or TARGETS:
        for path in generate(target):
            print(path)
