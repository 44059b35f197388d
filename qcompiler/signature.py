"""The I/O signature embedded in every artifact as the C symbol `qc_model_signature`.

Text format (read by the C runtime in deploy/qc_runtime.c)::

    qcompiler-signature 1
    device cpu|cuda
    input NAME DTYPE NDIM D0 D1 ...
    output NAME DTYPE NDIM D0 D1 ...

Inputs are listed in the order `main` takes them. Names are percent-escaped
(`%` → `%25`, space → `%20`, newline → `%0A`, tab → `%09`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .elf import ElfFile
from .errors import QCompilerError
from .tensor_spec import TensorSpec

SYMBOL = "qc_model_signature"
_MAGIC = "qcompiler-signature 1"
_ESCAPES = [("%", "%25"), (" ", "%20"), ("\n", "%0A"), ("\t", "%09"), ("\r", "%0D")]


def _escape(name: str) -> str:
    for raw, escaped in _ESCAPES:
        name = name.replace(raw, escaped)
    return name


def _unescape(name: str) -> str:
    for raw, escaped in reversed(_ESCAPES):
        name = name.replace(escaped, raw)
    return name


@dataclass(frozen=True)
class Signature:
    device: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def render(self) -> str:
        lines = [_MAGIC, f"device {self.device}"]
        for kind, specs in (("input", self.inputs), ("output", self.outputs)):
            for spec in specs:
                dims = " ".join(str(d) for d in spec.shape)
                lines.append(f"{kind} {_escape(spec.name)} {spec.dtype} {len(spec.shape)} {dims}".rstrip())
        return "\n".join(lines) + "\n"

    @staticmethod
    def parse(text: str, where: str = "signature") -> "Signature":
        lines = text.splitlines()
        if not lines or lines[0] != _MAGIC:
            raise QCompilerError(f"{where}: not a qcompiler signature (expected first line {_MAGIC!r})")
        device, specs = "cpu", {"input": [], "output": []}
        for line in lines[1:]:
            fields = line.split(" ")
            if fields[0] == "device" and len(fields) == 2:
                device = fields[1]
            elif fields[0] in specs and len(fields) >= 4 and len(fields) == 4 + int(fields[3]):
                specs[fields[0]].append(TensorSpec(_unescape(fields[1]), tuple(int(d) for d in fields[4:]), fields[2]))
            else:
                raise QCompilerError(f"{where}: malformed signature line {line!r}")
        return Signature(device, tuple(specs["input"]), tuple(specs["output"]))

    def c_source(self) -> str:
        """A C/C++ translation unit defining the exported symbol (export_library compiles with g++)."""
        literal = self.render().replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return (
            "#ifdef __cplusplus\nextern \"C\" {\n#endif\n"
            f'__attribute__((visibility("default"))) extern const char {SYMBOL}[];\n'
            f'const char {SYMBOL}[] = "{literal}";\n'
            "#ifdef __cplusplus\n}\n#endif\n"
        )


def read_signature(so_path: str | Path) -> Signature:
    """Read the embedded signature from a `.so` of any architecture, without loading it."""
    raw = ElfFile(so_path).read_symbol(SYMBOL)
    if raw is None:
        raise QCompilerError(f"{so_path} has no {SYMBOL} symbol: it was not built by qcompiler")
    return Signature.parse(raw.split(b"\0", 1)[0].decode("utf-8"), where=str(so_path))
