"""Regenerates `generated/` from `proto/`: the only way stubs are made (`make proto`)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import grpc_tools
from google.api import annotations_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"
OUT = ROOT / "generated"
DESCRIPTOR_SET = OUT / "flowforge" / "descriptors.binpb"


def main() -> int:
    """Runs protoc for every FlowForge proto and writes stubs, .pyi files and a descriptor set."""
    googleapis = Path(annotations_pb2.__file__).resolve().parent.parent.parent
    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    bindir = Path(sys.executable).parent
    sources = sorted(str(p.relative_to(PROTO)) for p in PROTO.rglob("*.proto"))
    if (OUT / "flowforge").exists():
        shutil.rmtree(OUT / "flowforge")
    (OUT / "flowforge").mkdir(parents=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO}",
        f"-I{googleapis}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={OUT}",
        f"--grpc_python_out={OUT}",
        f"--mypy_out={OUT}",
        f"--mypy_grpc_out={OUT}",
        "--include_source_info",
        f"--descriptor_set_out={DESCRIPTOR_SET}",
        *sources,
    ]
    code = protoc.main(args)
    if code != 0:
        return int(code)
    for directory in [OUT / "flowforge", *(p for p in (OUT / "flowforge").rglob("*") if p.is_dir())]:
        if directory.name != "__pycache__":
            (directory / "__init__.py").touch()
    (OUT / "flowforge" / "py.typed").touch()
    print(f"generated {len(sources)} protos into {OUT.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
