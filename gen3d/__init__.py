"""gen3d: text-to-3D with score distillation -- radiance fields, nerfacc rendering, SDS / VSD and mesh export.

The parts (each swappable without touching the others):

* ``representation``: :class:`Representation`, what the loop asks of a 3D scene; ``field``: :class:`RadianceField`,
  the base of density fields, and :class:`VoxelField`, :class:`MLPField`, :class:`AnalyticBallField`;
* ``renderer``: :class:`Renderer`, nerfacc volume rendering on CPU and CUDA behind one call;
* ``guidance``: :class:`Guidance`, what the loop asks of a method (``sds``: :class:`SDS`, ``vsd``: :class:`VSD`;
  their gradients live in ``priorkit.distill.score``);
* ``loop``, ``regularisers``, ``checkpoint``, ``export``; ``config`` the settings; ``generate`` the entry point.

``generate``, ``SDS``, ``VSD`` and their configs are imported lazily (on first access), so ``import gen3d`` stays light.
"""

from importlib import import_module
from typing import Any

from priorkit.gen3d.field import AnalyticBallField, Background, MLPField, RadianceField, VoxelField
from priorkit.gen3d.renderer import (
    Renderer,
    RenderOutput,
    make_estimator,
    render,
    render_image,
    render_turntable,
    update_estimator,
)
from priorkit.gen3d.representation import Representation

_LAZY = {"generate": "priorkit.gen3d.generate", "GenerateConfig": "priorkit.gen3d.config",
         "GUIDANCES": "priorkit.gen3d.config", "Result": "priorkit.gen3d.loop",
         "Guidance": "priorkit.gen3d.guidance", "GuidanceConfig": "priorkit.gen3d.guidance",
         "SDS": "priorkit.gen3d.sds", "SDSConfig": "priorkit.gen3d.sds",
         "VSD": "priorkit.gen3d.vsd", "VSDConfig": "priorkit.gen3d.vsd", "LoRAConfig": "priorkit.distill.score.lora"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gen3d' has no attribute {name!r}")


__all__ = ["AnalyticBallField", "Background", "GUIDANCES", "GenerateConfig", "Guidance", "GuidanceConfig",
           "LoRAConfig", "MLPField", "RadianceField", "RenderOutput", "Renderer", "Representation", "Result", "SDS",
           "SDSConfig", "VSD", "VSDConfig", "VoxelField", "generate", "make_estimator", "render", "render_image",
           "render_turntable", "update_estimator"]
