"""What the fast-sampler benchmarks share: the NFEs, the record format, the students' training settings."""

from __future__ import annotations

from typing import Any

from priorkit.distill.core.training import TrainConfig

NFES = (1, 2, 4, 8)
REFERENCE_NFE = 128
SPACINGS = ("logsnr", "karras", "time")
METRIC = "sw2"


def record(target: str, method: str, nfe: int, value: float, train_seconds: float | None = None,
           detail: str = "", metric: str = METRIC) -> dict[str, Any]:
    return {"target": target, "method": method, "nfe": nfe, "metric": metric, "value": round(float(value), 5),
            "train_seconds": None if train_seconds is None else round(train_seconds, 1), "detail": detail}


def train_cfg(steps: int, lr: float = 5e-4) -> TrainConfig:
    return TrainConfig(steps=steps, lr=lr, warmup=min(100, steps // 10), ema_decay=0.995,
                       checkpoint_every=max(1, steps // 2), log_every=max(1, steps // 20))
