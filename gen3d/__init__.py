"""gen3d: text-to-3D with score distillation -- radiance fields, nerfacc rendering and mesh export."""

from gen3d.field import AnalyticBallField, Background, MLPField, VoxelField
from gen3d.renderer import RenderOutput, make_estimator, render, render_image, render_turntable, update_estimator

__all__ = ["AnalyticBallField", "Background", "MLPField", "RenderOutput", "VoxelField", "make_estimator", "render",
           "render_image", "render_turntable", "update_estimator"]
