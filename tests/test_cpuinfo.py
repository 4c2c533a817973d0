"""The one reader of /proc/cpuinfo that the CPU-following rules share (x264's asm, native bf16,
NNPACK's extra layers)."""

from __future__ import annotations

import pytest

from stylebatch import cpuinfo, models
from stylebatch.cpuinfo import CpuInfo, parse_cpuinfo

ZEN3_BF16 = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
             "model name\t: AMD EPYC 9V74\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\n"
             "processor\t: 1\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\nflags\t\t: fpu amx_bf16\n")
SAPPHIRE = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\nflags\t\t: fpu avx512f amx_bf16 amx_tile\n"
ARM = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm\nCPU implementer\t: 0x41\n"


@pytest.mark.parametrize("text, expected", [
    (ZEN3_BF16, CpuInfo("AuthenticAMD", 25, 17, frozenset({"fpu", "avx2", "avx512f", "avx512_bf16"}))),  # the first processor's
    (SAPPHIRE, CpuInfo("GenuineIntel", 6, 143, frozenset({"fpu", "avx512f", "amx_bf16", "amx_tile"}))),
    (ARM, CpuInfo()),                                    # no vendor, family, model or flags lines
    ("vendor_id\t: AuthenticAMD\ncpu family\t: ?\nmodel\t\t: x\n", CpuInfo("AuthenticAMD")),  # unreadable numbers
    ("", CpuInfo()),
])
def test_the_first_processors_fields_are_read_and_missing_ones_are_empty(text, expected):
    assert parse_cpuinfo(text) == expected


@pytest.mark.parametrize("text, native", [
    (ZEN3_BF16, True),   # AVX-512 BF16
    (SAPPHIRE, True),    # AMX
    ("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16x\n", False),  # a flag that only starts the same
    ("processor\t: 0\nflags\t\t: fpu avx2 avx512f\n", False),
    (ARM, False),
])
def test_native_bf16_is_the_whole_flag_avx512_bf16_or_amx_bf16(monkeypatch, text, native):
    monkeypatch.setattr(models, "this_cpu", lambda: parse_cpuinfo(text))
    assert models.cpu_has_native_bf16() is native


def test_a_machine_without_proc_cpuinfo_is_an_empty_cpu(monkeypatch, tmp_path):
    monkeypatch.setattr(cpuinfo, "CPUINFO_PATH", str(tmp_path / "missing"))
    cpuinfo.this_cpu.cache_clear()
    try:
        assert cpuinfo.this_cpu() == CpuInfo()
    finally:
        cpuinfo.this_cpu.cache_clear()


def test_this_machines_cpu_is_read_once(monkeypatch, tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(SAPPHIRE)
    monkeypatch.setattr(cpuinfo, "CPUINFO_PATH", str(path))
    cpuinfo.this_cpu.cache_clear()
    try:
        first = cpuinfo.this_cpu()
        path.write_text(ARM)
        assert cpuinfo.this_cpu() is first and first.vendor == "GenuineIntel"
    finally:
        cpuinfo.this_cpu.cache_clear()
