"""Capacity projection: how many nodes, dollars and kWh a day for 10 M and 1 B predictions a day.

From two measured figures: online throughput per replica (benchmarks/ray/serve_replicas.py, or
--qps-per-replica) and joules' energy per prediction (`joules batch --json` -> cost.per_1000.energy_j,
or --energy-j-per-1000). Prices and power come from joules' settings (config.yaml < JOULES_* < flags).

    avg QPS   = predictions/day / 86,400
    peak QPS  = avg QPS x --peak (default 2: a daily peak twice the mean)
    node QPS  = QPS per replica x replicas per node x --utilisation (default 0.7: headroom for bursts)
    nodes     = ceil(peak QPS / node QPS)
    $/day     = nodes x price per node-hour x 24           (provisioned capacity, the bill)
    kWh/day   = predictions x J per prediction / 3.6e6      (the meter's busy energy, static share included)
              + nodes x static W x idle hours / 1000        (idle time of the provisioned nodes)

    PYTHONPATH=src .venv/bin/python benchmarks/ray/capacity.py --serve-json serve.json --energy-j-per-1000 120
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def project(
    per_day: float,
    *,
    qps_per_replica: float,
    replicas_per_node: int,
    j_per_prediction: float,
    price_per_hour: float,
    static_watts: float,
    peak: float,
    utilisation: float,
) -> dict[str, float]:
    avg = per_day / 86_400
    node_qps = qps_per_replica * replicas_per_node * utilisation
    nodes = max(1, math.ceil(avg * peak / node_qps))
    busy_fraction = min(1.0, avg / (nodes * qps_per_replica * replicas_per_node))
    busy_kwh = per_day * j_per_prediction / 3.6e6
    idle_kwh = nodes * static_watts * 24 * (1 - busy_fraction) / 1000
    return {
        "predictions_per_day": per_day,
        "avg_qps": round(avg, 1),
        "peak_qps": round(avg * peak, 1),
        "nodes": nodes,
        "usd_per_day": round(nodes * price_per_hour * 24, 2),
        "kwh_per_day": round(busy_kwh + idle_kwh, 2),
        "busy_fraction": round(busy_fraction, 3),
    }


def main() -> int:
    from joules.settings import load_settings

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--serve-json", type=Path, help="serve_replicas.py output: QPS per replica of its largest run")
    p.add_argument("--qps-per-replica", type=float, help="measured QPS of one replica (instead of --serve-json)")
    p.add_argument("--replicas-per-node", type=int, default=2, help="replicas per node (default 2: 2 cores)")
    p.add_argument("--energy-j-per-1000", type=float, required=True, help="joules' energy per 1,000 predictions")
    p.add_argument("--peak", type=float, default=2.0)
    p.add_argument("--utilisation", type=float, default=0.7)
    args = p.parse_args()
    if args.serve_json:
        runs = json.loads(args.serve_json.read_text())["runs"]
        qps = max(runs, key=lambda r: r["replicas"])["qps_per_replica"]
    elif args.qps_per_replica:
        qps = args.qps_per_replica
    else:
        raise SystemExit("give --serve-json or --qps-per-replica")
    s = load_settings()
    inputs = {
        "qps_per_replica": qps,
        "replicas_per_node": args.replicas_per_node,
        "j_per_prediction": args.energy_j_per_1000 / 1000,
        "price_per_hour": s.price_per_hour,
        "static_watts": s.static_watts,
        "peak": args.peak,
        "utilisation": args.utilisation,
    }
    out = {"inputs": inputs, "projections": [project(n, **inputs) for n in (10e6, 1e9)]}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
