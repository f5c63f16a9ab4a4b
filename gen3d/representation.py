"""What the text-to-3D loop asks of a 3D representation: the :class:`Representation` protocol, and the lattice
helpers of density fields. ``priorkit.gen3d.field.RadianceField`` is a base class that gives any density field
the parts of the protocol it does not define itself.

A representation is an ``nn.Module`` over the scene box [-1, 1]^3 (z up, the camera convention of
``priorkit.distill.core.cameras``). The renderer reads it through ``query`` / ``density`` / ``normal``; the loop
builds its optimiser from ``parameter_groups``, adds its ``regularisers`` and calls ``extract_mesh`` at the end.
Checkpoints use ``state_dict`` / ``load_state_dict``. A new representation (a textured mesh, Gaussian splats) plugs
into the loop through ``generate(..., representation=factory)`` without editing the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BBox = tuple[Sequence[float], Sequence[float]]
UNIT_BOX: BBox = ((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))
PARAMETER_GROUPS = ("geometry", "appearance")  # the loop's lr: lr and color_lr_scale * lr


@runtime_checkable
class Representation(Protocol):
    """A 3D scene the loop optimises (an ``nn.Module``).

    * ``query(x (N, 3), with_normal) -> (rgb (N, 3) in [0, 1], sigma (N,) >= 0, normal (N, 3) or None)``
    * ``density(x (N, 3)) -> sigma (N,)``; ``normal(x (N, 3)) -> (N, 3)`` outward unit normals
    * ``parameter_groups() -> {"geometry": [...], "appearance": [...]}`` (every trainable parameter once)
    * ``regularisers() -> {name: term(generator) -> () tensor}``: its own terms, weighted by the loop by name
      ("tv", "color_tv", "voxel_entropy"; unknown names get weight 0)
    * ``extract_mesh(resolution) -> trimesh.Trimesh``; raises ValueError if there is no surface
    """

    def query(self, x: Tensor, with_normal: bool = False) -> tuple[Tensor, Tensor, Tensor | None]: ...

    def density(self, x: Tensor) -> Tensor: ...

    def normal(self, x: Tensor) -> Tensor: ...

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]: ...

    def regularisers(self) -> dict[str, Callable[[torch.Generator | None], Tensor]]: ...

    def extract_mesh(self, resolution: int) -> Any: ...


def lattice_points(resolution: int, bbox: BBox = UNIT_BOX, device: torch.device | str | None = None) -> Tensor:
    """Vertices of a regular lattice covering ``bbox``: (R, R, R, 3), ``[i, j, k]`` = (x_i, y_j, z_k)."""
    lo, hi = bbox
    axes = [torch.linspace(float(lo[a]), float(hi[a]), resolution, device=device) for a in range(3)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


@torch.no_grad()
def sample_density_grid(field: nn.Module, resolution: int, bbox: BBox = UNIT_BOX, chunk: int = 65536) -> Tensor:
    """Density of ``field`` on a lattice (see :func:`lattice_points`): (R, R, R), float32, on the field's device."""
    device = next(iter(field.parameters()), torch.empty(0)).device
    pts = lattice_points(resolution, bbox, device).reshape(-1, 3)
    out = torch.cat([field.density(pts[i:i + chunk]) for i in range(0, pts.shape[0], chunk)])
    return out.reshape(resolution, resolution, resolution).float()


def autograd_normal(density_fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Outward normals ``-grad(sigma)/|grad(sigma)|`` by autograd, (N, 3) -> (N, 3).

    Keeps the graph (second-order terms) when gradients are enabled, so shading losses reach the field.
    """
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True) if not x.requires_grad else x
        sigma = density_fn(xg)
        (grad,) = torch.autograd.grad(sigma.sum(), xg, create_graph=create_graph)
    return -F.normalize(grad, dim=-1, eps=1e-12)


__all__ = ["BBox", "PARAMETER_GROUPS", "Representation", "UNIT_BOX", "autograd_normal",
           "lattice_points", "sample_density_grid"]
