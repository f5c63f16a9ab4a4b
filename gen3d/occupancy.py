"""Empty-space skipping on the CPU path: an occupancy grid read off the field's own voxels at every step.

nerfacc's ``OccGridEstimator`` marches rays through an occupancy grid on CUDA only (``renderer._render_occgrid``).
On CPU the stratified path keeps its fixed (rays, samples) layout but queries the field only at the samples that lie
in occupied cells; the others get density 0 and no colour. For a voxel field the grid is a bound, not a guess: the
density inside a cell never exceeds the largest density at its 8 corner vertices (trilinear interpolation of the
logits stays within their range and the activation is monotone), so every skipped sample has density below
``threshold``. A ray crosses at most 2 sqrt(3) of the box, so skipping changes its optical depth by less than
``2 sqrt(3) threshold`` (< 1e-3 with the default) and a pixel's opacity by less than that.

The grid costs one activation and one 2x2x2 max-pool over the field's vertices; it is rebuilt from the field before
every render, so it carries no state (a resumed run renders exactly as the uninterrupted one did).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DEFAULT_THRESHOLD = 2.5e-4  # density; 2 sqrt(3) * 2.5e-4 = 8.7e-4 optical depth at most across the box


class OccupancyGrid:
    """Cells of a vertex lattice over ``[bbox_min, bbox_max]`` whose largest corner density exceeds ``threshold``.

    ``vertex_density`` (R, R, R) indexed ``[i, j, k]`` for the vertex at (x_i, y_j, z_k) (``VoxelField``'s layout);
    ``occupied(x)`` answers for points (N, 3); points outside the box are empty.
    """

    def __init__(self, vertex_density: Tensor, bbox_min: Tensor, bbox_max: Tensor,
                 threshold: float = DEFAULT_THRESHOLD) -> None:
        if vertex_density.ndim != 3 or min(vertex_density.shape) < 2:
            raise ValueError(f"vertex_density must be (R, R, R) with R >= 2, got {tuple(vertex_density.shape)}")
        corner_max = F.max_pool3d(vertex_density.detach()[None, None].float(), kernel_size=2, stride=1)[0, 0]
        self.cells = corner_max > threshold  # (R - 1,) * 3
        self.bbox_min, self.bbox_max = bbox_min.detach().float(), bbox_max.detach().float()
        self.threshold = float(threshold)

    @classmethod
    def of(cls, field: nn.Module, threshold: float = DEFAULT_THRESHOLD) -> OccupancyGrid | None:
        """The grid of a field that exposes ``vertex_density()`` (a ``VoxelField``); None for other fields (an MLP's
        density has no corner bound, so it is rendered at every sample)."""
        vertex_density = getattr(field, "vertex_density", None)
        if vertex_density is None:
            return None
        return cls(vertex_density(), field.bbox_min, field.bbox_max, threshold)

    @property
    def fraction(self) -> float:
        """Share of the cells that are occupied."""
        return float(self.cells.float().mean())

    def occupied(self, x: Tensor) -> Tensor:
        """(N,) bool: the point lies in the box and in an occupied cell."""
        x = x.detach().to(torch.promote_types(x.dtype, torch.float32))  # half-precision cell maths misplaces points
        lo, hi = self.bbox_min.to(x), self.bbox_max.to(x)
        n_cells = torch.tensor(self.cells.shape, device=x.device)
        u = (x - lo) / (hi - lo) * n_cells.to(x.dtype)  # cell coordinates, [0, R - 1] inside the box
        inside = ((x >= lo) & (x <= hi)).all(dim=-1)
        ijk = torch.minimum(u.floor().long().clamp_min(0), n_cells - 1)
        return inside & self.cells.to(x.device)[ijk[:, 0], ijk[:, 1], ijk[:, 2]]


__all__ = ["DEFAULT_THRESHOLD", "OccupancyGrid"]
