"""Training-free image restoration with diffusion priors: degradation operators (by family, in ``operators/``),
solvers (one file each, registered once in ``registry.py``), the shared solver pieces (``solver_common.py``), tiling
and the front door (``restore.py``)."""

from __future__ import annotations

import importlib
from typing import Any

# names -> the submodule defining them; imported on first access (PEP 562), so that reading the method registry
# (priorkit.inverse.registry, no torch) or one module does not import every solver. The solvers named like their
# modules (pigdm, dps, dflow, restore) are imported from those modules: ``from priorkit.inverse.pigdm import pigdm``.
_WHERE: dict[str, str] = {
    **dict.fromkeys(("CountingDenoiser", "DFlowDefaults"), "dflow"),
    **dict.fromkeys(("DPSDefaults",), "dps"),
    **dict.fromkeys(("exact_posterior", "operator_matrix", "posterior_given_xt"), "gaussian"),
    **dict.fromkeys(("Blur", "ComposedOperator", "Downsampling", "Inpainting", "Measurement", "Operator",
        "box_mask", "conjugate_gradient", "gaussian_kernel", "half_mask", "mask_from_image",
        "measurement_to_image_range", "measurement_to_model_range", "motion_kernel", "noise_in_model_range",
        "random_mask", "stroke_mask", "to_image_range", "to_model_range"), "operators"),
    **dict.fromkeys(("PiGDMDefaults", "PiGDMFlowDefaults", "pigdm_flow", "pigdm_guided_x0"), "pigdm"),
    **dict.fromkeys(("RestorationMethod", "get_method", "register"), "registry"),
    **dict.fromkeys(("METHODS", "TASKS", "Restoration", "RestoreDefaults", "degrade", "restore_folder"), "restore"),
    **dict.fromkeys(("CropOperator", "TiledDenoiser", "from_rgb", "to_rgb"), "tiling"),
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "CountingDenoiser",
    "CropOperator",
    "DFlowDefaults",
    "DPSDefaults",
    "METHODS",
    "PiGDMDefaults",
    "PiGDMFlowDefaults",
    "RestorationMethod",
    "Restoration",
    "RestoreDefaults",
    "TASKS",
    "TiledDenoiser",
    "degrade",
    "exact_posterior",
    "get_method",
    "register",
    "from_rgb",
    "operator_matrix",
    "pigdm_flow",
    "pigdm_guided_x0",
    "posterior_given_xt",
    "restore_folder",
    "to_rgb",
    "Blur",
    "ComposedOperator",
    "Downsampling",
    "Inpainting",
    "Measurement",
    "Operator",
    "box_mask",
    "conjugate_gradient",
    "gaussian_kernel",
    "half_mask",
    "mask_from_image",
    "measurement_to_image_range",
    "measurement_to_model_range",
    "motion_kernel",
    "noise_in_model_range",
    "random_mask",
    "stroke_mask",
    "to_image_range",
    "to_model_range",
]
