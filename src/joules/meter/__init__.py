"""Energy, dollars and CO2 of model calls."""

from joules.meter.cost import HEADER_CO2, HEADER_ENERGY, HEADER_METHOD, HEADER_USD, Cost, CostModel
from joules.meter.energy import MEASURED, MODELLED, ZERO, EnergyMeter, Measurement, WorkLedger, modelled
from joules.meter.report import job_cost, projection, savings

__all__ = [
    "HEADER_CO2",
    "HEADER_ENERGY",
    "HEADER_METHOD",
    "HEADER_USD",
    "MEASURED",
    "MODELLED",
    "ZERO",
    "Cost",
    "CostModel",
    "EnergyMeter",
    "Measurement",
    "WorkLedger",
    "job_cost",
    "modelled",
    "projection",
    "savings",
]
