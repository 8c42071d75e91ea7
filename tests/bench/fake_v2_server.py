"""A small real Open Inference Protocol V2 server with a known capacity, for load generator tests.

Its one model answers a request every ``--service-ms`` milliseconds, one at a
time (capacity 1000 / service-ms requests a second), and prices each call with
joules' meter the way the online server is to: cost headers, V2 response
``parameters`` and cost counters on /metrics.

    python -m tests.bench.fake_v2_server --port 8123 --service-ms 20
"""

from __future__ import annotations

import argparse
import asyncio
import time

import uvicorn
from prometheus_client import CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from joules.meter import CostModel, EnergyMeter
from joules.meter.prometheus import CostCounters


def build_app(service_ms: float, model: str = "fake") -> Starlette:
    meter = EnergyMeter(3.0, static_watts=10.0, counters=[])
    prices = CostModel(price_per_hour=0.1, vcpus=2, region="fr", grid_g_per_kwh=56.0)
    registry = CollectorRegistry()
    counters = CostCounters(registry)
    lock = asyncio.Lock()

    def work() -> None:
        end = time.thread_time() + 0.0002  # a little CPU, so there is energy to meter
        while time.thread_time() < end:
            pass

    async def infer(request: Request) -> Response:
        body = await request.json()
        texts = body["inputs"][0]["data"]
        async with lock:  # one call at a time: a fixed capacity
            token = meter.start()
            work()
            await asyncio.sleep(service_ms / 1000.0)
            m = meter.stop(token)
        costs = prices.split(m, [len(t) for t in texts])
        total = costs[0]
        for c in costs[1:]:
            total = total + c
        counters.add(model, "1", total)
        out = {
            "model_name": model,
            "model_version": "1",
            "outputs": [{"name": "label", "datatype": "BYTES", "shape": [len(texts)], "data": ["ham"] * len(texts)}],
            "parameters": total.parameters(),
        }
        return JSONResponse(out, headers=total.headers())

    async def ready(request: Request) -> Response:
        return JSONResponse({"ready": True})

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    return Starlette(
        routes=[
            Route(f"/v2/models/{model}/infer", infer, methods=["POST"]),
            Route("/v2/health/ready", ready),
            Route("/metrics", metrics),
        ]
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--service-ms", type=float, default=20.0)
    args = p.parse_args()
    uvicorn.run(build_app(args.service_ms), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
