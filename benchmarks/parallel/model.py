"""A model of decode time per token against the number of ranks N and the link between them.

    t(N) = t_weights(N) + (2 L + 1) * (alpha + 2 (N-1)/N * B * H * s / beta) + (alpha + (N-1)/N * B * V * 4 / beta)

- t_weights(N): a decode step reads every weight once; memory-bound, so W / (N * mem_bw) when each rank brings
  its own memory bandwidth (separate machines, GPUs), W / mem_bw when ranks share one socket's memory;
- 2 L + 1 all-reduces of B x H activations (one after attention and one after the MLP of each of L layers,
  one for the vocabulary-parallel embedding), each a ring all-reduce: 2 (N-1)/N of its bytes cross each
  rank's link (Patarasuk & Yuan 2009, "Bandwidth optimal all-reduce algorithms");
- one gather of B x V float32 logits to rank 0 ((N-1)/N of them cross rank 0's link);
- alpha: the fixed cost of one collective; beta: the link's bandwidth in bytes/s.

The numbers, and where they come from, are in LINKS and MODELS below; docs/parallel.md prints this table.

    .venv/bin/python benchmarks/parallel/model.py
"""

from __future__ import annotations

LINKS = {
    # name: (alpha seconds, beta bytes/s, source)
    "shm (here)": (
        30e-6,
        5e9,
        "alpha: benchmarks/parallel/allreduce.py, 2 ranks, 25-35 us at its best here; beta: memcpy",
    ),
    "gloo loopback (here)": (480e-6, 2e9, "alpha: benchmarks/parallel/allreduce.py, 2 ranks, 480-520 us here"),
    "10 GbE": (50e-6, 1.25e9, "beta: line rate; alpha: assumed kernel-TCP round trips on a LAN (measure yours)"),
    "100 GbE": (25e-6, 12.5e9, "beta: line rate; alpha: assumed, TCP (RDMA is about 5 us)"),
    "NVLink 4 (H100 SXM)": (8e-6, 380e9, "alpha: NVIDIA/nccl#1259, #583 (6-10 us); beta: 380 GB/s measured, nccl#1264"),
}
MODELS = {
    # name: (layers L, hidden H, vocabulary V, weight bytes W, bytes per activation s)
    "SmolLM2-135M fp32": (30, 576, 49152, 135e6 * 4, 4),
    "3.3 GB Llama fp32": (28, 1536, 49152, 819e6 * 4, 4),
    "Llama-2-70B fp16": (80, 8192, 32000, 69e9 * 2, 2),
}
MEMORY_BW = {"CPU socket (DDR4/5, ~20 GB/s on 2 cores)": 20e9, "H100 HBM3 (3.35 TB/s)": 3.35e12}


def comm_seconds(model: tuple[int, int, int, float, int], n: int, batch: int, link: tuple[float, float, str]) -> float:
    layers, hidden, vocab, _, s = model
    alpha, beta, _ = link
    if n == 1:
        return 0.0
    ring = 2 * (n - 1) / n
    reduce = (2 * layers + 1) * (alpha + ring * batch * hidden * s / beta)
    gather = alpha + (n - 1) / n * batch * vocab * 4 / beta
    return reduce + gather


def main() -> None:
    print("communication per decode step, ms (batch 1 / batch 16):")
    print(f"{'model':<20} {'link':<22} " + " ".join(f"{'N=' + str(n):>13}" for n in (2, 3, 4, 8)))
    for mname, m in MODELS.items():
        for lname, link in LINKS.items():
            cells = [
                f"{comm_seconds(m, n, 1, link) * 1e3:6.2f}/{comm_seconds(m, n, 16, link) * 1e3:6.2f}"
                for n in (2, 3, 4, 8)
            ]
            print(f"{mname:<20} {lname:<22} " + " ".join(f"{c:>13}" for c in cells))
    print("\nweights read per decode step, ms (whole model / one of N=2, 3, 4, 8 ranks with its own memory):")
    for mname, m in MODELS.items():
        for bname, bw in MEMORY_BW.items():
            w = m[3]
            print(
                f"{mname:<20} {bname:<42} {w / bw * 1e3:9.1f} / "
                + " ".join(f"{w / n / bw * 1e3:7.2f}" for n in (2, 3, 4, 8))
            )
    print("\nlinks:")
    for lname, (alpha, beta, src) in LINKS.items():
        print(f"  {lname}: alpha {alpha * 1e6:.0f} us, beta {beta / 1e9:g} GB/s ({src})")


if __name__ == "__main__":
    main()
