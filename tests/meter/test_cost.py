from __future__ import annotations

from pathlib import Path

import pytest

from joules.errors import ConfigError
from joules.grid import grid_intensity
from joules.hardware import cpu_power_for, parse_cpuinfo, static_watts_for
from joules.meter import HEADER_CO2, HEADER_ENERGY, HEADER_USD, MODELLED, Cost, CostModel, Measurement, job_cost
from joules.meter.report import projection, savings
from joules.settings import load_settings

PRICES = CostModel(price_per_hour=0.36, vcpus=4, region="fr", grid_g_per_kwh=56.0)


def test_price_of_a_measurement() -> None:
    c = PRICES.price(Measurement(cpu_s=2.0, wall_s=1.0, energy_j=7.2e5, method=MODELLED, how="h"))
    assert c.usd == pytest.approx(0.36 * 2.0 / (4 * 3600))  # 2 of the 4 x 3600 CPU-seconds an hour buys
    assert c.co2_g == pytest.approx(0.2 * 56.0)  # 7.2e5 J = 0.2 kWh
    assert c.method == MODELLED and c.how == "h"


def test_split_among_requests_adds_up_to_the_call() -> None:
    m = Measurement(0.03, 0.02, 0.9, MODELLED, "h", 0.2)
    parts = PRICES.split_by_owner(m, owners=["a", "b", "a", "c"], work=[10, 5, 20, 15])
    assert set(parts) == {"a", "b", "c"}
    assert parts["a"].energy_j == pytest.approx(0.9 * 30 / 50)
    whole = PRICES.price(m)
    for key in ("energy_j", "usd", "co2_g", "cpu_s"):
        assert sum(getattr(p, key) for p in parts.values()) == pytest.approx(getattr(whole, key))
    total = Cost()
    for p in parts.values():
        total = total + p
    assert total.energy_j == pytest.approx(0.9) and total.method == MODELLED


def test_headers_and_parameters() -> None:
    c = Cost(energy_j=0.123456789, usd=1.5e-7, co2_g=2e-5, method="measured", how="RAPL")
    h = c.headers()
    assert h[HEADER_ENERGY] == "0.123457" and float(h[HEADER_USD]) == 1.5e-7 and float(h[HEADER_CO2]) == 2e-5
    assert h["X-Joules-Energy-Method"] == "measured"
    assert c.parameters() == {"energy_j": 0.123456789, "cost_usd": 1.5e-7, "co2_g": 2e-5, "energy_method": "measured"}


def test_job_cost_per_1000() -> None:
    d = job_cost(Cost(energy_j=50.0, usd=0.01, co2_g=3.0, method=MODELLED, how="h"), 2500)
    assert d["per_1000"] == pytest.approx({"energy_j": 20.0, "usd": 0.004, "co2_g": 1.2})
    assert d["method"] == MODELLED and d["predictions"] == 2500


def test_projection_arithmetic() -> None:
    per = Cost(energy_j=0.36, usd=1e-7, co2_g=0.05, cpu_s=0.004, method=MODELLED, how="h")
    p = projection(per, 1_000_000)
    assert p["per_day"]["kwh"] == pytest.approx(0.1)  # 0.36 J x 1e6 = 3.6e5 J = 0.1 kWh
    assert p["per_day"]["usd"] == pytest.approx(0.1)
    assert p["per_day"]["co2_kg"] == pytest.approx(50.0)
    assert p["per_year"]["kwh"] == pytest.approx(36.5)
    assert p["per_month"]["kwh"] == pytest.approx(36.5 / 12)
    half = projection(Cost(energy_j=0.18, usd=5e-8, co2_g=0.025, method=MODELLED, how="h"), 1_000_000)
    s = savings(p, half)
    assert s["kwh_per_year"] == pytest.approx(18.25) and s["energy_ratio"] == pytest.approx(0.5)


def test_cpu_table_and_static_power() -> None:
    emerald = parse_cpuinfo("processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 207\n")
    p = cpu_power_for(emerald)
    assert p.watts_per_thread == pytest.approx(350 / 128, abs=1e-3) and "8592+" in p.source
    unknown = cpu_power_for(parse_cpuinfo("vendor_id : Weird\ncpu family : 1\nmodel : 2\n"))
    assert unknown.watts_per_thread == 3.5 and "not in the TDP table" in unknown.source
    assert static_watts_for(2, 10.0) == pytest.approx(2 * 0.74 + 3.92)


def test_regions() -> None:
    assert grid_intensity("FR") == 56.0
    assert grid_intensity("eu-west-3") == 56.0
    with pytest.raises(ConfigError, match="unknown region 'atlantis'"):
        grid_intensity("atlantis")


def test_settings_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "h"
    home.mkdir()
    (home / "config.yaml").write_text("region: de\nprice_per_hour: 0.5\nwatts_per_core: 4\nvcpus: 8\n")
    monkeypatch.setenv("JOULES_PRICE_PER_HOUR", "0.25")
    s = load_settings(home=home, watts_per_core=6.0)
    assert (s.region, s.grid_intensity, s.price_per_hour, s.watts_per_core, s.vcpus) == ("de", 381.0, 0.25, 6.0, 8)
    assert s.origin["price_per_hour"] == "environment JOULES_PRICE_PER_HOUR"
    assert s.origin["watts_per_core"] == "flag" and s.origin["region"].endswith("config.yaml")
    m = CostModel.from_settings(s)
    assert (m.price_per_hour, m.vcpus, m.grid_g_per_kwh) == (0.25, 8, 381.0)
    assert load_settings(home=home, region="se").grid_intensity == 41.0
    monkeypatch.setenv("JOULES_GRID_G_PER_KWH", "100")
    assert load_settings(home=home).grid_intensity == 100.0


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("region: atlantis\n", "unknown region 'atlantis'"),
        ("price_per_hour: cheap\n", "price_per_hour must be a number, got 'cheap'"),
        ("vcpus: 2.5\n", "vcpus must be a whole number"),
        ("static_watts: -1\n", "static_watts must be between"),
        ("colour: blue\n", "unknown settings \\['colour'\\]"),
    ],
)
def test_bad_settings(tmp_path: Path, config: str, message: str) -> None:
    (tmp_path / "config.yaml").write_text(config)
    with pytest.raises(ConfigError, match=message):
        load_settings(home=tmp_path)
