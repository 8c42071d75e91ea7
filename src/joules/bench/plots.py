"""PNG plots of a benchmark: the latency distribution, and throughput against p99 across rates."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np


class BenchReport(Protocol):
    """What the plots read of a report (``driver.BenchReport``; a Protocol, so plots import nothing of driver)."""

    @property
    def config(self) -> Any: ...
    @property
    def result(self) -> Any: ...
    @property
    def search(self) -> Any: ...


def write_plots(report: BenchReport, directory: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: list[Path] = []
    r = report.result
    title = f"{report.config.model} · {report.config.scenario} · {r.target if r else report.config.url or 'in-process'}"
    if r is not None and len(r.latencies_s):
        lat = np.sort(r.latencies_s * 1000.0)
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        ax1.hist(lat, bins=min(80, max(10, len(lat) // 20)), color="#3465a4")
        ax1.set_xlabel("latency from scheduled time (ms)")
        ax1.set_ylabel("queries")
        for name in ("p50", "p90", "p99"):
            ax1.axvline(r.latency_ms[name], color="#cc0000", linestyle="--", linewidth=1)
            ax1.annotate(name, (r.latency_ms[name], ax1.get_ylim()[1] * 0.9), fontsize=8, color="#cc0000")
        ax2.plot(lat, np.arange(1, len(lat) + 1) / len(lat), color="#3465a4")
        ax2.set_xscale("log")
        ax2.set_xlabel("latency (ms, log)")
        ax2.set_ylabel("fraction of queries")
        ax2.grid(True, alpha=0.3)
        fig.suptitle(f"{title}: {r.qps_achieved:.1f} qps, {r.samples:,} queries", fontsize=10)
        fig.tight_layout()
        path = directory / "latency.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out.append(path)
    if report.search is not None and report.search.points:
        pts = sorted(report.search.points, key=lambda p: p.qps)
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for p in pts:
            ax.scatter(
                p.verdict.achieved_qps,
                min(p.verdict.p99_ms, 1e5),
                color="#4e9a06" if p.verdict.passed else "#cc0000",
                zorder=3,
            )
            ax.annotate(f"{p.qps:.0f}", (p.verdict.achieved_qps, min(p.verdict.p99_ms, 1e5)), fontsize=7)
        ax.plot(
            [p.verdict.achieved_qps for p in pts], [min(p.verdict.p99_ms, 1e5) for p in pts], color="#888", zorder=1
        )
        ax.axhline(
            report.config.p99_ms,
            color="#cc0000",
            linestyle="--",
            linewidth=1,
            label=f"p99 bound {report.config.p99_ms:g} ms",
        )
        ax.set_yscale("log")
        ax.set_xlabel("throughput achieved (queries/s)")
        ax.set_ylabel("p99 latency (ms, log)")
        best = report.search.max_qps
        ax.set_title(
            f"{title}\nmax qps within bound: {best:.1f}" if best else f"{title}\nno rate within bound", fontsize=9
        )
        ax.legend(fontsize=8)
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        path = directory / "throughput_vs_p99.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out.append(path)
    return out
