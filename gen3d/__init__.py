"""gen3d: text-to-3D with score distillation -- radiance fields, nerfacc rendering, SDS / VSD and mesh export.

``generate``, ``SDS``, ``VSD`` and their configs are imported lazily (on first access), so ``import gen3d`` stays light.
"""

from importlib import import_module
from typing import Any

from gen3d.field import AnalyticBallField, Background, MLPField, VoxelField
from gen3d.renderer import RenderOutput, make_estimator, render, render_image, render_turntable, update_estimator

_LAZY = {"generate": "gen3d.generate", "GenerateConfig": "gen3d.generate", "Result": "gen3d.generate",
         "SDS": "gen3d.sds", "SDSConfig": "gen3d.sds", "VSD": "gen3d.vsd", "VSDConfig": "gen3d.vsd",
         "LoRAConfig": "gen3d.lora"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gen3d' has no attribute {name!r}")


__all__ = ["AnalyticBallField", "Background", "GenerateConfig", "LoRAConfig", "MLPField", "RenderOutput", "Result",
           "SDS", "SDSConfig", "VSD", "VSDConfig", "VoxelField", "generate", "make_estimator", "render", "render_image",
           "render_turntable", "update_estimator"]
