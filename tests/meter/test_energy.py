from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from joules.errors import ConfigError
from joules.meter import MEASURED, MODELLED, ZERO, EnergyMeter, Measurement
from joules.meter.clocks import ThreadCpuClock
from joules.meter.counters import RaplCounter
from tests.meter.fakes import FakeClock, FakeCounter


def meter(clock: FakeClock, counters: list[FakeCounter] | None = None) -> EnergyMeter:
    return EnergyMeter(3.0, static_watts=10.0, counters=counters or [], clock=clock)


def test_modelled_energy_is_busy_cpu_times_watts_plus_static_share() -> None:
    clock = FakeClock(native={7: 5.0})
    m = meter(clock)
    t = m.start()
    clock.now += 0.5
    clock.caller_cpu += 0.2
    clock.native[7] += 0.3  # a pool thread worked for the call
    r = m.stop(t)
    assert r.method == MODELLED and "modelled" in r.how and "3 W" in r.how and "10 W static" in r.how
    assert r.cpu_s == pytest.approx(0.5)
    assert r.wall_s == pytest.approx(0.5)
    assert r.static_j == pytest.approx(0.5 * 10.0)
    assert r.energy_j == pytest.approx(0.5 * 3.0 + 5.0)


def test_idle_native_time_between_calls_is_not_charged() -> None:
    clock = FakeClock(native={7: 0.0})
    m = meter(clock)
    m.stop(m.start())
    clock.native[7] += 4.0  # another model's pool, or spinning, while no call runs
    clock.now += 10
    t = m.start()
    clock.now += 0.1
    clock.native[7] += 0.05
    r = m.stop(t)
    assert r.cpu_s == pytest.approx(0.05)
    assert r.wall_s == pytest.approx(0.1)


def test_overlapping_calls_split_shared_time_and_add_up() -> None:
    clock = FakeClock(native={7: 0.0})
    m = meter(clock)
    a = m.start()
    clock.now += 1.0
    clock.native[7] += 1.0  # only a is running: all of it is a's
    b = m.start()
    clock.now += 1.0
    clock.native[7] += 2.0  # a and b share these two seconds equally
    ra = m.stop(a)
    clock.now += 1.0
    clock.native[7] += 0.5
    rb = m.stop(b)
    assert ra.cpu_s == pytest.approx(1.0 + 1.0)
    assert rb.cpu_s == pytest.approx(1.0 + 0.5)
    assert ra.cpu_s + rb.cpu_s == pytest.approx(3.5), "native CPU time is attributed exactly once"
    assert ra.static_j + rb.static_j == pytest.approx(3.0 * 10.0), "3 s of static power, split, add up"


def test_rapl_is_measured_and_shared_by_cpu_time() -> None:
    clock = FakeClock()
    rapl = FakeCounter("RAPL package-0", "cpu", joules=1000.0)
    m = meter(clock, [rapl])
    t = m.start()
    clock.now += 1.0
    clock.caller_cpu += 0.5
    clock.busy += 1.0  # the machine was busy 1 CPU-second: half of it this call's
    rapl.joules += 40.0
    r = m.stop(t)
    assert r.method == MEASURED and "RAPL package-0" in r.how
    assert r.energy_j == pytest.approx(20.0)
    assert r.static_j == 0


def test_gpu_measured_with_cpu_modelled_is_labelled_modelled() -> None:
    clock = FakeClock()
    gpu = FakeCounter("NVML (1 GPU)", "gpu", joules=5.0)
    m = meter(clock, [gpu])
    t = m.start()
    clock.now += 0.1
    clock.caller_cpu += 0.1
    gpu.joules += 30.0
    r = m.stop(t)
    assert r.method == MODELLED and "GPU measured: NVML" in r.how
    assert r.energy_j == pytest.approx(0.1 * 3.0 + 0.1 * 10.0 + 30.0)


def test_split_by_work_adds_up() -> None:
    m = Measurement(0.9, 0.3, 12.0, MODELLED, "how", 3.0)
    parts = m.split([10, 20, 30])
    assert [p.energy_j for p in parts] == pytest.approx([2.0, 4.0, 6.0])
    assert sum(p.energy_j for p in parts) == pytest.approx(m.energy_j)
    assert sum(p.cpu_s for p in parts) == pytest.approx(m.cpu_s)
    assert all(p.method == MODELLED and p.how == "how" for p in parts)
    assert [p.energy_j for p in m.split([0, 0])] == pytest.approx([6.0, 6.0])


def test_sum_keeps_method_and_zero_is_neutral() -> None:
    a = Measurement(1, 1, 1, MEASURED, "rapl")
    assert (ZERO + a) == a and (a + ZERO) == a
    assert (a + a).method == MEASURED
    assert (a + Measurement(1, 1, 1, MODELLED, "model")).method == MODELLED


def test_stop_needs_a_token_from_start() -> None:
    m = meter(FakeClock())
    t = m.start()
    m.stop(t)
    with pytest.raises(ValueError, match="stopped twice"):
        m.stop(t)


def test_bad_power_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="watts_per_core"):
        EnergyMeter(0, clock=FakeClock(), counters=[])


def test_rapl_sysfs_layout_with_wrap(tmp_path) -> None:
    pkg = tmp_path / "intel-rapl:0"
    dram = pkg / "intel-rapl:0:2"
    dram.mkdir(parents=True)
    (tmp_path / "intel-rapl:0:0").mkdir()  # a subzone listed at the top level too: not a package
    for zone, name, energy in ((pkg, "package-0", 999_000_000), (dram, "dram", 5_000_000)):
        (zone / "name").write_text(name + "\n")
        (zone / "energy_uj").write_text(f"{energy}\n")
        (zone / "max_energy_range_uj").write_text("1000000000\n")
    rapl = RaplCounter.detect(tmp_path)
    assert rapl is not None and rapl.name == "RAPL dram+package-0"
    first = rapl.read_j()
    (pkg / "energy_uj").write_text("2000000\n")  # wrapped past 1e9 uJ
    assert rapl.read_j() - first == pytest.approx(3.0)


def test_thread_clock_counts_worker_threads_not_other_python_threads() -> None:
    """Real clocks: a busy native pool is counted, a busy unrelated Python thread is not."""
    if not ThreadCpuClock.available():
        pytest.skip("per-thread CPU clocks need Linux /proc")
    m = EnergyMeter(1.0, static_watts=0.0, counters=[], clock=ThreadCpuClock())
    stop = threading.Event()
    spent: list[float] = []

    def bystander() -> None:  # e.g. an HTTP loop: a Python thread that is not the caller
        c0 = time.thread_time()
        x = 0
        while not stop.is_set():
            x += 1
        spent.append(time.thread_time() - c0)

    t = threading.Thread(target=bystander, daemon=True)
    proc0 = time.process_time()
    token = m.start()
    t.start()
    try:
        a = np.random.default_rng(0).random((600, 600))
        for _ in range(8):
            a = a @ a / 600.0  # numpy's BLAS threads are native threads
        cpu0 = time.thread_time()
        while time.thread_time() - cpu0 < 0.05:
            pass
    finally:
        stop.set()
        t.join()
    r = m.stop(token)
    proc = time.process_time() - proc0
    assert r.cpu_s >= 0.05
    assert spent[0] > 0.01, "the bystander ran"
    assert r.cpu_s <= proc - 0.5 * spent[0] + 0.01, "the bystander's CPU time is not the call's"


def test_of_shares_is_the_sum_of_the_scaled_parts() -> None:
    a = Measurement(0.9, 0.3, 12.0, MEASURED, "rapl", 3.0)
    b = Measurement(0.2, 0.1, 1.5, MODELLED, "model", 0.5)
    zero_how = Measurement(0.0, 0.0, 0.0, MODELLED, "idle")  # not zero: its how still marks the sum as mixed
    cases = [
        [],
        [(a, 0.5)],
        [(a, 0.25), (a, 0.5), (ZERO, 0.3)],
        [(a, 0.1), (b, 0.7), (a, 0.2)],
        [(b, 0.0), (a, 1.0)],  # a part scaled to nothing is skipped, as + skips it
        [(a, 0.5), (zero_how, 1.0)],
    ]
    for parts in cases:
        chained = ZERO
        for m, w in parts:
            chained = chained + m.scaled(w)
        assert Measurement.of_shares(parts) == chained, parts
