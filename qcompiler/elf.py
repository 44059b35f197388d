"""Just enough ELF64 reading to inspect an artifact without loading it (any architecture)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import QCompilerError

_MACHINES = {0x3E: "x86_64", 0xB7: "aarch64", 0x28: "arm", 0xF3: "riscv"}
_SHT_DYNSYM = 11


@dataclass(frozen=True)
class Section:
    name: str
    type: int
    offset: int
    size: int
    addr: int
    link: int
    entsize: int


class ElfFile:
    """A little-endian ELF64 shared object, read whole into memory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.data = self.path.read_bytes()
        if self.data[:4] != b"\x7fELF":
            raise QCompilerError(f"{self.path} is not an ELF shared object")
        if self.data[4] != 2 or self.data[5] != 1:
            raise QCompilerError(f"{self.path}: only little-endian ELF64 is supported")
        (self.machine_id,) = struct.unpack_from("<H", self.data, 18)
        shoff, = struct.unpack_from("<Q", self.data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", self.data, 0x3A)
        raw = []
        for i in range(shnum):
            name, stype, _flags, addr, offset, size, link, _info, _align, entsize = struct.unpack_from(
                "<IIQQQQIIQQ", self.data, shoff + i * shentsize
            )
            raw.append((name, stype, offset, size, addr, link, entsize))
        strtab_off = raw[shstrndx][2]
        self.sections = [
            Section(self._cstr(strtab_off + n), t, o, s, a, l, e) for n, t, o, s, a, l, e in raw
        ]

    def _cstr(self, offset: int) -> str:
        end = self.data.index(b"\0", offset)
        return self.data[offset:end].decode("utf-8", "replace")

    @property
    def machine(self) -> str:
        return _MACHINES.get(self.machine_id, f"machine-0x{self.machine_id:x}")

    def dynamic_symbols(self) -> dict[str, tuple[int, int]]:
        """Defined dynamic symbols: name → (virtual address, size)."""
        symbols = {}
        for sec in self.sections:
            if sec.type != _SHT_DYNSYM:
                continue
            strtab = self.sections[sec.link]
            for off in range(sec.offset, sec.offset + sec.size, sec.entsize):
                name, _info, _other, shndx, value, size = struct.unpack_from("<IBBHQQ", self.data, off)
                if shndx != 0 and name:
                    symbols[self._cstr(strtab.offset + name)] = (value, size)
        return symbols

    def read_symbol(self, name: str) -> bytes | None:
        """The bytes of a defined data symbol, or None if the object has no such symbol."""
        found = self.dynamic_symbols().get(name)
        if found is None:
            return None
        addr, size = found
        for sec in self.sections:
            if sec.addr <= addr < sec.addr + sec.size and sec.type != 8:  # 8: SHT_NOBITS
                start = sec.offset + (addr - sec.addr)
                return self.data[start : start + size]
        return None
