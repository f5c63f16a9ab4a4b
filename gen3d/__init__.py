"""gen3d: text-to-3D with score distillation -- radiance fields, nerfacc rendering, SDS / VSD and mesh export.

``generate``, ``SDS``, ``VSD`` and their configs are imported lazily (on first access), so ``import gen3d`` stays light.
"""

from importlib import import_module
from typing import Any

from priorkit.gen3d.field import AnalyticBallField, Background, MLPField, VoxelField
from priorkit.gen3d.renderer import (
    RenderOutput,
    make_estimator,
    render,
    render_image,
    render_turntable,
    update_estimator,
)

_LAZY = {"generate": "priorkit.gen3d.generate", "GenerateConfig": "priorkit.gen3d.generate",
         "Result": "priorkit.gen3d.generate", "SDS": "priorkit.gen3d.sds", "SDSConfig": "priorkit.gen3d.sds",
         "VSD": "priorkit.gen3d.vsd", "VSDConfig": "priorkit.gen3d.vsd", "LoRAConfig": "priorkit.distill.score.lora"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gen3d' has no attribute {name!r}")


__all__ = ["AnalyticBallField", "Background", "GenerateConfig", "LoRAConfig", "MLPField", "RenderOutput", "Result",
           "SDS", "SDSConfig", "VSD", "VSDConfig", "VoxelField", "generate", "make_estimator", "render", "render_image",
           "render_turntable", "update_estimator"]
