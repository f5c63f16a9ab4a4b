"""What the text-to-3D loop asks of a 3D representation: the :class:`Representation` protocol, and
:class:`RadianceField`, a base class that gives any density field the parts it does not define itself.

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

from priorkit.gen3d.regularisers import voxel_entropy

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


class RadianceField(nn.Module):
    """Base of density fields: a subclass defines ``forward(x (N, 3)) -> (rgb (N, 3), sigma (N,))`` and
    ``density(x) -> (N,)``; this class adds the rest of :class:`Representation`:

    * ``query``: ``forward`` plus ``normal`` when asked; ``normal``: by autograd of the density;
    * ``parameter_groups``: parameters whose name holds "color" are appearance, the others geometry;
    * ``regularisers``: "voxel_entropy" at random points of the box (``priorkit.gen3d.regularisers.voxel_entropy``);
    * ``density_grid`` and ``extract_mesh``: marching cubes of the density (``priorkit.gen3d.export``).
    """

    def query(self, x: Tensor, with_normal: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
        """Colour (N, 3), density (N,) and (if asked) outward unit normal (N, 3) at x (N, 3)."""
        rgb, sigma = self(x)
        return rgb, sigma, self.normal(x) if with_normal else None

    def normal(self, x: Tensor) -> Tensor:
        """Outward unit normal -grad(sigma)/|grad(sigma)| at x (N, 3) -> (N, 3), by autograd."""
        return autograd_normal(self.density, x)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """{"geometry": [...], "appearance": [...]}: parameters named "*color*" are appearance."""
        named = list(self.named_parameters())
        return {"geometry": [p for n, p in named if "color" not in n],
                "appearance": [p for n, p in named if "color" in n]}

    def regularisers(self) -> dict[str, Callable[[torch.Generator | None], Tensor]]:
        """{"voxel_entropy": at 32768 random points of the box, drawn from the generator}."""
        return {"voxel_entropy": lambda g: voxel_entropy(self, generator=g)}

    def density_grid(self, resolution: int = 128, bbox: BBox = UNIT_BOX) -> Tensor:
        """Density on an R^3 lattice over ``bbox`` (R, R, R), ``[i, j, k]`` = (x_i, y_j, z_k)."""
        return sample_density_grid(self, resolution, bbox)

    def extract_mesh(self, resolution: int = 128) -> Any:
        """Marching-cubes mesh (trimesh) of the density at ``ln 2 / h`` with vertex colours; ValueError if empty."""
        from priorkit.gen3d.export import extract_mesh

        return extract_mesh(self, resolution=resolution)


__all__ = ["BBox", "PARAMETER_GROUPS", "RadianceField", "Representation", "UNIT_BOX", "autograd_normal",
           "lattice_points", "sample_density_grid"]
