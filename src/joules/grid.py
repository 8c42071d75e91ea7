"""Grid carbon intensity: grams of CO2-equivalent per kWh of electricity, by region.

Source: Ember, yearly electricity data, lifecycle carbon intensity of electricity
generation for 2023, as published by Our World in Data
(ourworldindata.org/grapher/carbon-intensity-electricity, table for 2023; the
world figure, 481 g/kWh, is Ember's Global Electricity Review 2024). Figures are
yearly averages of generation; the hour-by-hour intensity of a grid can be
several times lower or higher. Cloud regions map to the country they are in.
Set ``grid_g_per_kwh`` to use a figure of your own (for example your
provider's market-based factor).
"""

from __future__ import annotations

from joules.errors import ConfigError

GRID_SOURCE = "Ember yearly electricity data, 2023 (via Our World in Data)"
GRID_YEAR = 2023

# ISO 3166 alpha-2 (lower case) or "world" -> gCO2e/kWh, 2023.
GRID_INTENSITY: dict[str, float] = {
    "world": 481.0,
    "au": 549.0,
    "at": 111.0,
    "be": 138.0,
    "br": 98.0,
    "ca": 170.0,
    "cn": 582.0,
    "de": 381.0,
    "dk": 152.0,
    "fi": 79.0,
    "fr": 56.0,
    "gb": 238.0,
    "ie": 291.0,
    "in": 713.0,
    "jp": 485.0,
    "no": 30.0,
    "pl": 662.0,
    "se": 41.0,
    "us": 369.0,
}

# Cloud regions -> the country whose grid feeds them.
CLOUD_REGIONS: dict[str, str] = {
    "us-east-1": "us",
    "us-east-2": "us",
    "us-west-2": "us",
    "ca-central-1": "ca",
    "sa-east-1": "br",
    "eu-west-1": "ie",
    "eu-west-2": "gb",
    "eu-west-3": "fr",
    "eu-central-1": "de",
    "eu-north-1": "se",
    "ap-south-1": "in",
    "ap-northeast-1": "jp",
    "ap-southeast-2": "au",
    "cn-north-1": "cn",
    "us-central1": "us",
    "europe-west1": "be",
    "europe-west3": "de",
    "europe-west9": "fr",
    "europe-north1": "fi",
    "asia-northeast1": "jp",
    "eastus": "us",
    "northeurope": "ie",
    "francecentral": "fr",
    "swedencentral": "se",
}


def regions() -> list[str]:
    known = set(GRID_INTENSITY) | {r for r, c in CLOUD_REGIONS.items() if c in GRID_INTENSITY}
    return sorted(known)


def grid_intensity(region: str) -> float:
    """gCO2e per kWh of ``region`` (a country code, ``world`` or a cloud region)."""
    key = region.strip().lower()
    key = CLOUD_REGIONS.get(key, key)
    if key not in GRID_INTENSITY:
        raise ConfigError(
            f"unknown region {region!r}; known regions: {', '.join(regions())}; "
            "or set grid_g_per_kwh (JOULES_GRID_G_PER_KWH) to a figure of your own"
        )
    return GRID_INTENSITY[key]
