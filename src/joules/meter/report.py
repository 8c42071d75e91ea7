"""Cost figures people read: job totals with per-1,000 figures, and projections."""

from __future__ import annotations

from typing import Any

from joules.meter.cost import J_PER_KWH, Cost

DAYS_PER_MONTH = 365.0 / 12.0


def job_cost(total: Cost, predictions: int) -> dict[str, Any]:
    """Totals and per-1,000-predictions figures for a batch or stream job summary."""
    per = 1000.0 / predictions if predictions > 0 else 0.0
    return {
        "method": total.method,
        "how": total.how,
        "predictions": predictions,
        "total": {"energy_j": total.energy_j, "usd": total.usd, "co2_g": total.co2_g, "cpu_s": total.cpu_s},
        "per_1000": {"energy_j": total.energy_j * per, "usd": total.usd * per, "co2_g": total.co2_g * per},
    }


def period(per_prediction: Cost, predictions: float) -> dict[str, float]:
    """kWh, dollars and kg CO2 of ``predictions`` predictions."""
    return {
        "predictions": predictions,
        "kwh": per_prediction.energy_j * predictions / J_PER_KWH,
        "usd": per_prediction.usd * predictions,
        "co2_kg": per_prediction.co2_g * predictions / 1000.0,
        "cpu_hours": per_prediction.cpu_s * predictions / 3600.0,
    }


def projection(per_prediction: Cost, per_day: float) -> dict[str, Any]:
    """Daily, monthly and yearly figures at ``per_day`` predictions a day."""
    if per_day < 0:
        raise ValueError(f"per_day must be >= 0, got {per_day}")
    return {
        "method": per_prediction.method,
        "how": per_prediction.how,
        "per_prediction": {
            "energy_j": per_prediction.energy_j,
            "usd": per_prediction.usd,
            "co2_g": per_prediction.co2_g,
            "cpu_ms": per_prediction.cpu_s * 1000.0,
            "wall_ms": per_prediction.wall_s * 1000.0,
        },
        "per_day": period(per_prediction, per_day),
        "per_month": period(per_prediction, per_day * DAYS_PER_MONTH),
        "per_year": period(per_prediction, per_day * 365.0),
    }


def savings(baseline: dict[str, Any], other: dict[str, Any]) -> dict[str, float]:
    """What ``other`` saves per year against ``baseline`` (both from ``projection``); negative costs more."""
    b, o = baseline["per_year"], other["per_year"]
    out = {f"{k}_per_year": b[k] - o[k] for k in ("kwh", "usd", "co2_kg")}
    e_b, e_o = baseline["per_prediction"]["energy_j"], other["per_prediction"]["energy_j"]
    out["energy_ratio"] = e_o / e_b if e_b else float("nan")
    return out
