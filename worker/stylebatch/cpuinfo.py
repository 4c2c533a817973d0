"""What /proc/cpuinfo says about this machine's CPU: the one reader for the rules that follow the CPU
(x264's `asm` option, native bf16, NNPACK's extra layers).

Contract: `this_cpu()` reads the file once per process and describes its first processor (every
core of a machine the rules see is the same kind); where there is no such file (not Linux, a
sandbox) every field is empty, so no rule that needs a field applies. `parse_cpuinfo` is the pure
part, for tests."""

from __future__ import annotations

import functools
from dataclasses import dataclass

CPUINFO_PATH = "/proc/cpuinfo"


@dataclass(frozen=True)
class CpuInfo:
    vendor: str = ""                   # vendor_id: "AuthenticAMD", "GenuineIntel"; "" where not said
    family: int | None = None          # cpu family, model: as numbers; None where not said
    model: int | None = None
    flags: frozenset[str] = frozenset()  # the flags line's words: "avx2", "avx512_bf16", ...

    def is_amd(self, family: int, below_model: int) -> bool:
        """An AMD CPU of this family with a model number below below_model (Zen 1: 23, 0x30)."""
        return (self.vendor == "AuthenticAMD" and self.family == family
                and self.model is not None and self.model < below_model)


def _number(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def parse_cpuinfo(text: str) -> CpuInfo:
    """The first processor's fields of a /proc/cpuinfo text (lines `key<tabs>: value` up to the
    first blank line)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return CpuInfo(vendor=fields.get("vendor_id", ""), family=_number(fields.get("cpu family")),
                   model=_number(fields.get("model")), flags=frozenset(fields.get("flags", "").split()))


@functools.cache
def this_cpu() -> CpuInfo:
    """This machine's CPU as CPUINFO_PATH describes it; CpuInfo() where it cannot be read."""
    try:
        with open(CPUINFO_PATH, encoding="utf-8", errors="replace") as f:
            return parse_cpuinfo(f.read(65536))  # the first processor's lines, with room for long flags
    except OSError:
        return CpuInfo()
