"""frontier.png: tokens/s/GPU against tokens/s/user, every feasible deployment, the frontier and the picks.
Headless (Agg); matplotlib is imported only here, when a plot is asked for."""

from __future__ import annotations

from pathlib import Path

from recipes.search import SearchResult

MARKERS = {"latency": "^", "balanced": "D", "throughput": "s"}


def plot_frontier(result: SearchResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    req = result.request
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    ax.scatter([c.tps_per_user for c in result.candidates], [c.tps_per_gpu for c in result.candidates],
               s=6, color="0.75", label=f"{len(result.candidates)} deployments")
    front = result.frontier
    ax.plot([c.tps_per_user for c in front], [c.tps_per_gpu for c in front], "-o", ms=3, color="C0",
            label="Pareto frontier")
    for profile, c in result.picks.items():
        ax.scatter([c.tps_per_user], [c.tps_per_gpu], s=90, marker=MARKERS[profile.value], zorder=5,
                   label=f"{profile.value}: {c.layout.label}, batch {c.batch}")
    ax.set_xlabel("tokens/s/user (1000 / TPOT ms)")
    ax.set_ylabel("tokens/s/GPU (output)")
    where = f"{req.gpus} x {req.gpu.name}" if req.gpus else req.gpu.name
    ax.set_title(f"{req.model.name} on {where}, ISL {req.work.isl} / OSL {req.work.osl}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
