"""Energy, dollars and CO2 of model calls."""

from joules.meter.energy import MEASURED, MODELLED, ZERO, EnergyMeter, Measurement

__all__ = ["MEASURED", "MODELLED", "ZERO", "EnergyMeter", "Measurement"]
