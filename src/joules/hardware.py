"""What the machine draws: watts per busy hardware thread and static watts.

Used only when no power counter can be read (see ``meter/counters.py``). A busy
hardware thread is charged the CPU's thermal design power divided by its
hardware threads: TDP is the power a package sustains with every thread busy,
so TDP / threads is the marginal power of one busy thread. CPUs are matched by
vendor, family and model number from ``/proc/cpuinfo``, because cloud guests
often hide the SKU ("Intel(R) Xeon(R) Processor"); each entry names the
representative SKU of that microarchitecture and the vendor's published TDP.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# (vendor_id, cpu family, model) -> (microarchitecture, representative SKU, TDP W, hardware threads).
# Sources: Intel ARK product pages (ark.intel.com) and AMD EPYC product pages (amd.com), "TDP" and
# "# of Threads" of the named SKU.
CPU_TDP_TABLE: dict[tuple[str, int, int], tuple[str, str, float, int]] = {
    ("GenuineIntel", 6, 85): ("Skylake-SP / Cascade Lake-SP", "Xeon Platinum 8280", 205.0, 56),
    ("GenuineIntel", 6, 106): ("Ice Lake-SP", "Xeon Platinum 8380", 270.0, 80),
    ("GenuineIntel", 6, 143): ("Sapphire Rapids", "Xeon Platinum 8480+", 350.0, 112),
    ("GenuineIntel", 6, 207): ("Emerald Rapids", "Xeon Platinum 8592+", 350.0, 128),
    ("AuthenticAMD", 23, 49): ("Zen 2 (Rome)", "EPYC 7742", 225.0, 128),
    ("AuthenticAMD", 25, 1): ("Zen 3 (Milan)", "EPYC 7763", 280.0, 128),
    ("AuthenticAMD", 25, 17): ("Zen 4 (Genoa)", "EPYC 9654", 360.0, 192),
}

# An unknown CPU: Cloud Carbon Footprint's average maximum watts per vCPU for AWS (3.5 W), derived
# from SPECpower results (github.com/cloud-carbon-footprint/cloud-carbon-footprint,
# packages/aws/src/domain/AwsFootprintEstimationConstants.ts, MAX_WATTS_AVG).
FALLBACK_WATTS_PER_THREAD = 3.5

# Static power (memory and idle) of the instance, from the same CCF constants: MIN_WATTS_AVG 0.74 W
# per vCPU (an idle vCPU) and MEMORY_COEFFICIENT 0.000392 kWh per GB-hour, i.e. 0.392 W per GB.
IDLE_WATTS_PER_VCPU = 0.74
WATTS_PER_GB_MEMORY = 0.392


@dataclass(frozen=True, kw_only=True)
class CpuPower:
    """Watts per busy hardware thread and where the figure comes from."""

    watts_per_thread: float
    source: str


@dataclass(frozen=True, kw_only=True)
class CpuId:
    vendor: str
    family: int
    model: int
    name: str


def parse_cpuinfo(text: str) -> CpuId | None:
    """The first processor's vendor, family, model and name from ``/proc/cpuinfo`` text."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    try:
        return CpuId(
            vendor=fields["vendor_id"],
            family=int(fields["cpu family"]),
            model=int(fields["model"]),
            name=fields.get("model name", ""),
        )
    except (KeyError, ValueError):
        return None


def cpu_power_for(cpu: CpuId | None) -> CpuPower:
    entry = CPU_TDP_TABLE.get((cpu.vendor, cpu.family, cpu.model)) if cpu else None
    if cpu is None or entry is None:
        what = f"{cpu.name or cpu.vendor} (family {cpu.family} model {cpu.model})" if cpu else "an unknown CPU"
        return CpuPower(
            watts_per_thread=FALLBACK_WATTS_PER_THREAD,
            source=f"{what} is not in the TDP table: CCF average max watts per vCPU ({FALLBACK_WATTS_PER_THREAD} W)",
        )
    arch, sku, tdp, threads = entry
    return CpuPower(
        watts_per_thread=round(tdp / threads, 3),
        source=f"{arch} ({cpu.vendor} family {cpu.family} model {cpu.model}): {sku} {tdp:g} W TDP / {threads} threads",
    )


@lru_cache(maxsize=1)
def detect_cpu_power() -> CpuPower:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    return cpu_power_for(parse_cpuinfo(text))


def vcpus() -> int:
    """Hardware threads this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@lru_cache(maxsize=1)
def memory_gb() -> float:
    try:
        text = Path("/proc/meminfo").read_text(encoding="utf-8")
    except OSError:
        return 0.0
    m = re.search(r"^MemTotal:\s+(\d+)\s+kB", text, re.M)
    return int(m.group(1)) / 1e6 if m else 0.0


def static_watts_for(threads: int, gb: float) -> float:
    """CCF's idle power of ``threads`` vCPUs plus ``gb`` GB of memory."""
    return round(threads * IDLE_WATTS_PER_VCPU + gb * WATTS_PER_GB_MEMORY, 3)


def detect_static_watts() -> float:
    return static_watts_for(vcpus(), memory_gb())
