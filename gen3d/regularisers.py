"""Regularisers of the text-to-3D loop: they keep empty space empty and opacity binary (no fog).

Per particle and step (weights ``lambda_*`` in ``GenerateConfig``; the colour TV's in the method's config):

    L_reg = l_sparsity mean(o) + l_entropy mean(H(o)) + l_orient mean(orientation)        (from the renders)
          + sum_k l_k r_k(field)                                                          (the representation's own)

with o the ray opacity and H the binary entropy. The representation names its own terms
(:meth:`~priorkit.gen3d.representation.Representation.regularisers`): a voxel grid has "tv" (TV of its logits),
"color_tv" (TV of its colour grid) and "voxel_entropy", ``mean_v H(1 - exp(-sigma_v h))``, which the loop ramps up
linearly over the run (h the voxel edge). Terms a representation does not have are skipped; terms of weight 0 are
not computed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

REFERENCE_VOXEL = 2.0 / 63  # voxel edge of a 64^3 lattice over [-1, 1]^3, for fields without a grid


def binary_entropy(o: Tensor) -> Tensor:
    """H(o) = -(o log o + (1 - o) log(1 - o)) elementwise, o clamped to [1e-5, 1 - 1e-5]."""
    o = o.clamp(1e-5, 1 - 1e-5)
    return -(o * torch.log(o) + (1 - o) * torch.log(1 - o))  # H(o)


def colour_tv(logits: Tensor) -> Tensor:
    """Total variation of a colour grid (C, R, R, R): mean squared difference of neighbours, summed over axes."""
    return sum(logits.diff(dim=d).square().mean() for d in (1, 2, 3))


def voxel_edge(field: Any) -> float:
    """Mean voxel edge h of a field (``field.voxel_size``, else the reference 2 / 63)."""
    return float(torch.as_tensor(getattr(field, "voxel_size", torch.full((3,), REFERENCE_VOXEL))).float().mean())


def opacity_entropy(sigma: Tensor, h: float) -> Tensor:
    """Mean binary entropy of the opacity of one voxel of edge h, H(1 - exp(-sigma h)), over densities sigma: ().

    It pushes every voxel to empty or solid (no fog, sharp surfaces), with the switch at sigma = ln 2 / h, the
    level that ``priorkit.gen3d.export`` meshes."""
    return binary_entropy(-torch.expm1(-sigma * h)).mean()  # a = 1 - exp(-sigma h)


def voxel_entropy(field: nn.Module, n_points: int = 32768, generator: torch.Generator | None = None) -> Tensor:
    """:func:`opacity_entropy` of any field at ``n_points`` uniform random points of the box [-1, 1]^3: ()."""
    h = voxel_edge(field)
    device = next(iter(field.parameters())).device
    x = torch.rand(n_points, 3, generator=generator).to(device) * 2 - 1
    return opacity_entropy(field.density(x), h)


def render_terms(reg: Tensor, opacity: Tensor, orientation: Tensor | None, *, sparsity: float, entropy: float,
                 orientation_weight: float) -> Tensor:
    """``reg`` plus the terms of one particle's renders: opacity (B, S, S, 1), orientation (B, S, S, 1) or None."""
    reg = reg + sparsity * opacity.mean() + entropy * binary_entropy(opacity).mean()
    if orientation_weight and orientation is not None:
        reg = reg + orientation_weight * orientation.mean()
    return reg


def field_terms(reg: Tensor, terms: Mapping[str, Callable[[torch.Generator | None], Tensor]],
                weights: Mapping[str, float], ramps: Mapping[str, float], generator: torch.Generator | None) -> Tensor:
    """``reg`` plus ``weights[k] * ramps[k] * terms[k](generator)`` for the representation's terms, in its order.

    A term without a weight, or of weight 0, is not computed (nor does it draw from ``generator``); ``ramps``
    (default 1) scale weights over the run.
    """
    for name, term in terms.items():
        lam = weights.get(name, 0.0)
        if lam:
            reg = reg + lam * ramps.get(name, 1.0) * term(generator)
    return reg


__all__ = ["binary_entropy", "colour_tv", "field_terms", "opacity_entropy", "render_terms", "voxel_edge",
           "voxel_entropy"]
