"""Published gpt-oss measurements (`data/published.yaml`) and the model's prediction of each."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from functools import cache
from pathlib import Path

import numpy as np
import yaml

from recipes.calibration import Efficiency
from recipes.estimate import BATCH_GRID, steady_state
from recipes.hardware import GpuSpec, gpu
from recipes.layout import Layout, check_layout
from recipes.memory import Workload, max_seqs_per_rank
from recipes.model import resolve_model
from recipes.perf import PerfModel
from recipes.precision import KvDtype, MoeBackend, QuantAlgo

PUBLISHED_FILE = Path(__file__).resolve().parent / "data" / "published.yaml"


class Metric(str, Enum):
    MAX_TPS_PER_GPU = "max_tps_per_gpu"
    TPS_PER_USER_AT_BATCH = "tps_per_user_at_batch"
    TPS_PER_USER_AT_CONCURRENCY = "tps_per_user_at_concurrency"


@dataclass(frozen=True)
class Point:
    id: str
    source: str
    model: str
    layout_name: str
    gpu: GpuSpec
    layout: Layout
    work: Workload
    metric: Metric
    value: float
    batch: int | None = None
    concurrency: int | None = None
    fit: bool = True
    note: str = ""

    @property
    def unit(self) -> str:
        return "tps/gpu" if self.metric is Metric.MAX_TPS_PER_GPU else "tps/user"


@cache
def points() -> tuple[Point, ...]:
    data = yaml.safe_load(PUBLISHED_FILE.read_text())
    out = []
    for row in data["points"]:
        lay = dict(data["layouts"][row["layout"]])
        g = gpu(lay.pop("gpu"))
        layout = Layout(tp=lay["tp"], ep=lay["ep"], attention_dp=lay["attention_dp"],
                        moe_backend=MoeBackend(lay["moe_backend"]), quant=QuantAlgo(lay["quant"]),
                        kv_dtype=KvDtype.FP8)
        work = Workload(row["isl"], row["osl"])
        pid = f"{row['source']}/{row['model']}/{row['layout']}/{work.tag}/{row['metric']}"
        out.append(Point(id=pid, source=row["source"], model=row["model"], layout_name=row["layout"], gpu=g,
                         layout=layout, work=work, metric=Metric(row["metric"]), value=float(row["value"]),
                         batch=row.get("batch"), concurrency=row.get("concurrency"),
                         fit=row.get("fit", True), note=row.get("note", "")))
    return tuple(out)


def predict(p: Point, eff: Efficiency | None = None) -> tuple[float, int]:
    """(predicted value, batch per rank it was taken at)."""
    spec = resolve_model(p.model).spec
    check_layout(p.layout, spec, p.gpu)
    pm = PerfModel(spec, p.gpu, p.layout, eff)
    if p.metric is Metric.MAX_TPS_PER_GPU:
        grid = np.array(BATCH_GRID, dtype=float)
        cap = max_seqs_per_rank(spec, p.gpu, p.layout, grid, p.work)
        ok = grid <= cap
        tps = np.where(ok, steady_state(pm, grid, p.work)["tps_per_gpu"], 0.0)
        i = int(np.argmax(tps))
        return float(tps[i]), int(grid[i])
    if p.metric is Metric.TPS_PER_USER_AT_BATCH:
        return float(steady_state(pm, p.batch, p.work)["tps_per_user"]), int(p.batch)
    cap = int(max_seqs_per_rank(spec, p.gpu, p.layout, 4096, p.work))
    running = min(cap, p.concurrency / p.layout.dp)
    return float(steady_state(pm, running, p.work)["tps_per_user"]), int(running)
