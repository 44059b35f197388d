"""Which int8 (and bfloat16) multiply-accumulate instructions each kernel of an artifact executes,
read from its machine code.

`objdump -d` (GNU binutils) disassembles the `.so`; each kernel's code is the symbol
`<kernel>_compute_` (the `__tvm_ffi_<kernel>` symbol is its calling wrapper). This is the
evidence that a quantized kernel really runs on the int8 hardware path.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

from .errors import QCompilerError

# Mnemonics of the 8-bit integer multiply-accumulate instructions, per instruction set: dot
# products, and NEON's widening multiply(-accumulate)s of 16-bit lanes (plain NEON, no dot product).
INT8_MAC = {"vpdpbusd": "x86 AVX-512 VNNI", "vpdpbusds": "x86 AVX-512 VNNI", "tdpbusd": "x86 AMX",
            "sdot": "ARM dot product", "udot": "ARM dot product",
            **{m: "ARM NEON widening multiply" for m in ("smlal", "smlal2", "smull", "smull2")}}
# bfloat16 dot products (the bf16 strategy); float16 has no x86 multiply-accumulate of its own here
BF16_MAC = {"vdpbf16ps": "x86 AVX-512 BF16", "tdpbf16ps": "x86 AMX-BF16"}
DOT_PRODUCT_MAC = {**INT8_MAC, **BF16_MAC}
# Convolution, dense and matmul kernels; not the tap interleaving of depthwise convolutions
# (kernels/taps.py), which moves bytes and multiplies nothing.
COMPUTE_KERNELS = re.compile(r"conv|dense|matmul|depthwise(?!_taps)")
_SYMBOL = re.compile(r"^[0-9a-f]+ <(?P<name>[^>]+)>:$")


def objdump_for(machine: str) -> str:
    """The objdump that reads `machine` code (the host's, or the aarch64 cross binutils)."""
    tool, package = ("aarch64-linux-gnu-objdump", "binutils-aarch64-linux-gnu") if machine == "aarch64" \
        else ("objdump", "binutils")
    if shutil.which(tool) is None:
        raise QCompilerError(f"disassembling {machine} code needs {tool} (Debian package {package})")
    return tool


def dot_product_counts(so_path: Path, machine: str = "x86_64") -> dict[str, Counter]:
    """For each kernel of `so_path`, how many times each int8 or bfloat16 multiply-accumulate
    mnemonic (DOT_PRODUCT_MAC) occurs in its code."""
    listing = subprocess.run([objdump_for(machine), "-d", "--no-show-raw-insn", str(so_path)],
                             capture_output=True, text=True, check=True).stdout
    counts: dict[str, Counter] = {}
    current = None
    for line in listing.splitlines():
        symbol = _SYMBOL.match(line)
        if symbol:
            name = symbol.group("name")
            current = name[: -len("_compute_")] if name.endswith("_compute_") else None
            if current is not None:
                counts.setdefault(current, Counter())
            continue
        fields = line.split("\t")  # "  addr:", "mnemonic operands"
        if current is not None and len(fields) > 1 and fields[1].split():
            mnemonic = fields[1].split()[0]
            if mnemonic in DOT_PRODUCT_MAC:
                counts[current][mnemonic] += 1
    return counts


def compute_kernel_usage(so_path: Path, machine: str = "x86_64") -> list[tuple[str, list[str]]]:
    """(kernel, int8/bfloat16 multiply-accumulate mnemonics it uses) for each conv/dense/matmul
    kernel, sorted by name."""
    counts = dot_product_counts(so_path, machine)
    return [(name, sorted(counts[name])) for name in sorted(counts) if COMPUTE_KERNELS.search(name)]
