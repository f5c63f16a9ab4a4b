"""Radiance fields over the scene box [-1, 1]^3 (z up, the convention of ``distill/zoo/cameras.py``).

Every field is a :class:`~priorkit.gen3d.representation.RadianceField` (the loop's ``Representation``): it maps
points ``x`` (N, 3) to a colour in [0, 1] (N, 3) and a density sigma >= 0 (N,), and gives outward unit normals
``n = -grad(sigma) / |grad(sigma)|`` (N, 3). The renderer only relies on this interface:

* ``density(x) -> (N,)``
* ``forward(x) -> (rgb (N, 3), sigma (N,))``
* ``normal(x) -> (N, 3)``
* ``query(x, with_normal) -> (rgb, sigma, normal or None)`` (one pass when the renderer shades)
* ``density_grid(resolution, bbox) -> (R, R, R)`` indexed ``[i, j, k]`` = point ``(x_i, y_j, z_k)`` (export)

Fields:

* :class:`RadianceField` -- the base: what a density field does not define itself (normals by autograd, parameter
  groups by name, a sampled voxel entropy, marching-cubes export).
* :class:`VoxelField` -- a dense grid of density logits and colour logits, trilinearly interpolated (CPU friendly).
* :class:`MLPField` -- a Fourier-feature MLP (NeRF positional encoding) for GPU runs.
* :class:`AnalyticBallField` -- a ball of constant density, for tests of the renderer.
* :class:`Background` -- the colour seen by rays that leave the box, as a function of the view direction.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from priorkit.gen3d.regularisers import colour_tv, opacity_entropy, voxel_edge, voxel_entropy
from priorkit.gen3d.representation import UNIT_BOX, BBox, autograd_normal, lattice_points, sample_density_grid


class _TruncExp(torch.autograd.Function):
    """exp(x) whose backward clamps the exponent at 15 (Instant-NGP / threestudio ``trunc_exp``)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=15.0))


def density_activation(raw: Tensor, kind: str = "softplus") -> Tensor:
    """Density from a logit: ``softplus(raw)`` or the shifted truncated exponential ``exp(raw - 1)``."""
    if kind == "softplus":
        return F.softplus(raw)
    if kind == "exp":
        return _TruncExp.apply(raw - 1.0)
    raise ValueError(f"unknown density activation {kind!r}; use 'softplus' or 'exp'")


def inverse_density_activation(sigma: Tensor, kind: str = "softplus", min_density: float = 1e-8) -> Tensor:
    """The logit whose activation is ``sigma`` (clamped to ``min_density``); inverse of :func:`density_activation`."""
    sigma = sigma.clamp_min(min_density)
    if kind == "softplus":
        return sigma + torch.log(-torch.expm1(-sigma))  # softplus^-1(s) = log(exp(s) - 1), stable form
    if kind == "exp":
        return torch.log(sigma) + 1.0
    raise ValueError(f"unknown density activation {kind!r}; use 'softplus' or 'exp'")


def blob_density_bias(x: Tensor, blob_density: float, blob_radius: float) -> Tensor:
    """Magic3D / threestudio density blob ``blob_density * (1 - |x| / blob_radius)``; x (N, 3) -> (N,)."""
    return blob_density * (1.0 - x.norm(dim=-1) / blob_radius)


def finite_difference_normal(density_fn: Callable[[Tensor], Tensor], x: Tensor, eps: float = 1e-2) -> Tensor:
    """Outward normals from central differences of the density with step ``eps``, (N, 3) -> (N, 3)."""
    offsets = torch.eye(3, device=x.device, dtype=x.dtype) * eps  # (3, 3)
    pts = torch.cat([x[:, None, :] + offsets, x[:, None, :] - offsets], dim=1)  # (N, 6, 3)
    s = density_fn(pts.reshape(-1, 3)).reshape(-1, 6)
    grad = (s[:, :3] - s[:, 3:]) / (2 * eps)
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
        from priorkit.gen3d.export import extract_mesh  # trimesh and scikit-image only when exporting

        return extract_mesh(self, resolution=resolution)


class VoxelField(RadianceField):
    """A dense voxel grid of density and colour logits over ``bbox`` (default [-1, 1]^3).

    Storage: ``density_logits`` (R, R, R) and ``color_logits`` (3, R, R, R), indexed ``[..., i, j, k]`` for the
    vertex at (x_i, y_j, z_k) (vertices at ``linspace(lo, hi, R)`` per axis, i.e. ``align_corners=True``).
    ``F.grid_sample`` reads its sampling coordinates as (W, H, D) = (last, middle, first spatial axis), so points
    are passed to it as (z, y, x).

    Density ``sigma = act(trilinear(density_logits))`` with ``act`` softplus (default) or ``exp(. - 1)``;
    colour ``sigmoid(trilinear(color_logits))`` (grey at initialisation). The density logits start as the
    Magic3D blob ``blob_density * (1 - |x| / blob_radius)`` so optimisation starts from an object at the centre.
    Normals come from a grid of central differences of the density logits, interpolated in the same
    ``grid_sample`` call (softplus/exp are monotone, so the direction equals that of grad(sigma)).
    """

    def __init__(self, resolution: int = 64, *, blob_density: float = 10.0, blob_radius: float = 0.5,
                 activation: str = "softplus", bbox: BBox = UNIT_BOX) -> None:
        super().__init__()
        self.resolution = int(resolution)
        self.activation = activation
        density_activation(torch.zeros(1), activation)  # validate the name early
        self.register_buffer("bbox_min", torch.tensor([float(v) for v in bbox[0]]))
        self.register_buffer("bbox_max", torch.tensor([float(v) for v in bbox[1]]))
        pts = lattice_points(self.resolution, bbox)
        self.density_logits = nn.Parameter(blob_density_bias(pts, blob_density, blob_radius).contiguous())
        self.color_logits = nn.Parameter(torch.zeros(3, self.resolution, self.resolution, self.resolution))

    @property
    def voxel_size(self) -> Tensor:
        """Edge lengths of one voxel, (3,)."""
        return (self.bbox_max - self.bbox_min) / (self.resolution - 1)

    def _normalise(self, x: Tensor) -> Tensor:
        """World points (N, 3) -> grid_sample coordinates in [-1, 1], reordered to (z, y, x): (N, 3)."""
        u = 2.0 * (x - self.bbox_min) / (self.bbox_max - self.bbox_min) - 1.0
        return u.flip(-1)

    def _logit_gradient(self) -> Tensor:
        """Central differences of the density logits, (3, R, R, R) (one-sided at the borders)."""
        h = self.voxel_size.tolist()
        return torch.stack(torch.gradient(self.density_logits, spacing=h, dim=(0, 1, 2)), dim=0)

    def _sample(self, x: Tensor, channels: Tensor) -> Tensor:
        """Trilinear interpolation of ``channels`` (C, R, R, R) at x (N, 3) -> (N, C); border values outside the box."""
        grid = self._normalise(x).reshape(1, -1, 1, 1, 3).to(channels.dtype)
        out = F.grid_sample(channels[None], grid, mode="bilinear", padding_mode="border", align_corners=True)
        return out.reshape(channels.shape[0], -1).T

    def query(self, x: Tensor, with_normal: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
        """Colour (N, 3), density (N,) and (if asked) outward unit normal (N, 3) at points x (N, 3)."""
        chans = [self.density_logits[None], self.color_logits]
        if with_normal:
            chans.append(self._logit_gradient())
        v = self._sample(x, torch.cat(chans, dim=0))
        sigma = density_activation(v[:, 0], self.activation)
        rgb = torch.sigmoid(v[:, 1:4])
        normal = -F.normalize(v[:, 4:7], dim=-1, eps=1e-12) if with_normal else None
        return rgb, sigma, normal

    def density(self, x: Tensor) -> Tensor:
        """Density sigma >= 0 at x (N, 3) -> (N,)."""
        return density_activation(self._sample(x, self.density_logits[None])[:, 0], self.activation)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Colour (N, 3) in [0, 1] and density (N,) at x (N, 3)."""
        rgb, sigma, _ = self.query(x)
        return rgb, sigma

    def normal(self, x: Tensor) -> Tensor:
        """Outward unit normal -grad(sigma)/|grad(sigma)| at x (N, 3) -> (N, 3)."""
        return -F.normalize(self._sample(x, self._logit_gradient()), dim=-1, eps=1e-12)

    def vertex_density(self) -> Tensor:
        """Density at the grid's own vertices (R, R, R): what the CPU renderer's occupancy grid bounds cells with."""
        return density_activation(self.density_logits, self.activation)

    def density_grid(self, resolution: int | None = None, bbox: BBox = UNIT_BOX) -> Tensor:
        """Density on an R^3 lattice over ``bbox`` (R, R, R), ``[i, j, k]`` = (x_i, y_j, z_k)."""
        return sample_density_grid(self, resolution or self.resolution, bbox)

    @torch.no_grad()
    def fill_(self, density_fn: Callable[[Tensor], Tensor],
              rgb_fn: Callable[[Tensor], Tensor] | None = None) -> VoxelField:
        """Set the grid from functions of position: ``density_fn`` (N, 3) -> (N,) >= 0, ``rgb_fn`` -> (N, 3) in [0, 1].

        The logits at each vertex are the inverse activations of the target values (colours clamped to
        [1e-4, 1 - 1e-4]). Returns ``self``.
        """
        pts = lattice_points(self.resolution, (self.bbox_min.tolist(), self.bbox_max.tolist()),
                             self.density_logits.device).reshape(-1, 3)
        shape = self.density_logits.shape
        sigma = density_fn(pts).reshape(shape)
        self.density_logits.copy_(inverse_density_activation(sigma.float(), self.activation))
        if rgb_fn is not None:
            rgb = rgb_fn(pts).float().clamp(1e-4, 1 - 1e-4)
            self.color_logits.copy_(torch.logit(rgb).T.reshape(3, *shape))
        return self

    def tv_loss(self) -> Tensor:
        """Total variation (mean squared difference of neighbouring vertices) of density and colour logits, ()."""
        loss = self.density_logits.new_zeros(())
        for g in (self.density_logits[None], self.color_logits):
            for dim in (1, 2, 3):
                loss = loss + g.diff(dim=dim).square().mean()
        return loss

    def voxel_entropy(self) -> Tensor:
        """Mean binary entropy of the opacity of one voxel, H(1 - exp(-sigma h)), exactly over the vertices: ()."""
        return opacity_entropy(density_activation(self.density_logits, self.activation), voxel_edge(self))

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """{"geometry": [density_logits], "appearance": [color_logits]}."""
        return {"geometry": [self.density_logits], "appearance": [self.color_logits]}

    def regularisers(self) -> dict[str, Callable[[torch.Generator | None], Tensor]]:
        """{"tv": :meth:`tv_loss`, "color_tv": TV of the colour logits, "voxel_entropy": :meth:`voxel_entropy`}."""
        return {"tv": lambda g: self.tv_loss(), "color_tv": lambda g: colour_tv(self.color_logits),
                "voxel_entropy": lambda g: self.voxel_entropy()}


class FourierFeatures(nn.Module):
    """NeRF positional encoding ``[x, sin(2^k pi x), cos(2^k pi x)]_{k<L}``: (N, D) -> (N, D (1 + 2L))."""

    def __init__(self, n_frequencies: int = 6, include_input: bool = True) -> None:
        super().__init__()
        self.include_input = include_input
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(n_frequencies, dtype=torch.float32))

    def out_dim(self, in_dim: int) -> int:
        """Feature width for ``in_dim`` inputs."""
        return in_dim * (int(self.include_input) + 2 * self.freqs.numel())

    def forward(self, x: Tensor) -> Tensor:
        """(N, D) -> (N, out_dim(D))."""
        xf = (x[..., None] * self.freqs).flatten(-2)  # (N, D L)
        parts = [x] if self.include_input else []
        return torch.cat(parts + [torch.sin(xf), torch.cos(xf)], dim=-1)


class MLPField(RadianceField):
    """A Fourier-feature MLP radiance field (DreamFusion-style albedo NeRF) for GPU runs.

    ``raw = MLP(gamma(x))`` with 4 outputs; ``sigma = act(raw_0 + blob(x))`` with the fixed Magic3D blob bias
    ``blob_density * (1 - |x| / blob_radius)``; colour ``sigmoid(raw_1:4)``. The last layer starts at zero, so
    the field starts as the blob with grey colour. Normals by autograd (differentiable, second order).
    """

    def __init__(self, *, n_frequencies: int = 6, hidden: int = 64, n_layers: int = 3, blob_density: float = 10.0,
                 blob_radius: float = 0.5, activation: str = "softplus") -> None:
        super().__init__()
        self.blob_density, self.blob_radius, self.activation = blob_density, blob_radius, activation
        density_activation(torch.zeros(1), activation)
        self.encoding = FourierFeatures(n_frequencies)
        layers: list[nn.Module] = []
        width = self.encoding.out_dim(3)
        for _ in range(n_layers):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        last = nn.Linear(width, 4)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.mlp = nn.Sequential(*layers, last)

    voxel_size = torch.full((3,), 2.0 / 63)  # reference scale (a 64^3 grid over the box) for export thresholds

    def _raw(self, x: Tensor) -> Tensor:
        return self.mlp(self.encoding(x))

    def _sigma(self, raw0: Tensor, x: Tensor) -> Tensor:
        return density_activation(raw0 + blob_density_bias(x, self.blob_density, self.blob_radius), self.activation)

    def density(self, x: Tensor) -> Tensor:
        """Density sigma >= 0 at x (N, 3) -> (N,)."""
        return self._sigma(self._raw(x)[:, 0], x)

    def query(self, x: Tensor, with_normal: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
        """Colour (N, 3), density (N,) and (if asked) outward unit normal (N, 3) at x (N, 3)."""
        if not with_normal:
            raw = self._raw(x)
            return torch.sigmoid(raw[:, 1:4]), self._sigma(raw[:, 0], x), None
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            raw = self._raw(xg)
            sigma = self._sigma(raw[:, 0], xg)
            (grad,) = torch.autograd.grad(sigma.sum(), xg, create_graph=create_graph)
        rgb = torch.sigmoid(raw[:, 1:4])
        if not create_graph:
            rgb, sigma = rgb.detach(), sigma.detach()
        return rgb, sigma, -F.normalize(grad, dim=-1, eps=1e-12)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Colour (N, 3) in [0, 1] and density (N,) at x (N, 3)."""
        rgb, sigma, _ = self.query(x)
        return rgb, sigma

    def normal(self, x: Tensor) -> Tensor:
        """Outward unit normal at x (N, 3) -> (N, 3), by autograd."""
        return autograd_normal(self.density, x)


class AnalyticBallField(RadianceField):
    """A ball of constant density ``sigma0`` and radius ``radius`` at ``center``, constant colour ``rgb``.

    Along a ray with impact parameter b < radius the opacity is ``1 - exp(-sigma0 * 2 sqrt(radius^2 - b^2))``
    (Beer-Lambert). Has one dummy parameter (``scale``, multiplies the density) so gradient tests can use it.
    """

    def __init__(self, sigma0: float = 2.0, radius: float = 0.6, rgb: Sequence[float] = (0.9, 0.3, 0.1),
                 center: Sequence[float] = (0.0, 0.0, 0.0)) -> None:
        super().__init__()
        self.sigma0, self.radius = float(sigma0), float(radius)
        self.register_buffer("rgb", torch.tensor([float(c) for c in rgb]))
        self.register_buffer("center", torch.tensor([float(c) for c in center]))
        self.scale = nn.Parameter(torch.ones(()))

    voxel_size = torch.full((3,), 2.0 / 63)

    def density(self, x: Tensor) -> Tensor:
        """sigma0 inside the ball, 0 outside: (N, 3) -> (N,)."""
        inside = ((x - self.center).norm(dim=-1) <= self.radius).to(x.dtype)
        return self.scale * self.sigma0 * inside

    def normal(self, x: Tensor) -> Tensor:
        """Radial outward unit vector (N, 3) -> (N, 3)."""
        return F.normalize(x - self.center, dim=-1, eps=1e-12)

    def query(self, x: Tensor, with_normal: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
        """Colour (N, 3), density (N,), normal (N, 3) or None at x (N, 3)."""
        return self.rgb.expand(x.shape[0], 3), self.density(x), self.normal(x) if with_normal else None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Colour (N, 3) and density (N,) at x (N, 3)."""
        rgb, sigma, _ = self.query(x)
        return rgb, sigma


class Background(nn.Module):
    """Background colour seen along view directions: ``background(dirs (N, 3)) -> (N, 3)`` in [0, 1].

    ``mode="learned"``: a small MLP of Fourier-encoded unit directions, sigmoid output, starting at ``color``
    (DreamFusion's environment map MLP); ``mode="fixed"``: the constant ``color`` (white by default).
    """

    def __init__(self, mode: str = "learned", color: Sequence[float] = (1.0, 1.0, 1.0), *, n_frequencies: int = 2,
                 hidden: int = 32) -> None:
        super().__init__()
        if mode not in ("learned", "fixed"):
            raise ValueError(f"unknown background mode {mode!r}; use 'learned' or 'fixed'")
        self.mode = mode
        c = torch.tensor([float(v) for v in color]).clamp(1e-3, 1 - 1e-3)
        self.register_buffer("color", c)
        if mode == "learned":
            self.encoding = FourierFeatures(n_frequencies)
            last = nn.Linear(hidden, 3)
            nn.init.zeros_(last.weight)
            with torch.no_grad():
                last.bias.copy_(torch.logit(c))
            self.mlp = nn.Sequential(nn.Linear(self.encoding.out_dim(3), hidden), nn.SiLU(), last)

    def forward(self, dirs: Tensor) -> Tensor:
        """Colour (N, 3) for view directions dirs (N, 3) (normalised internally)."""
        if self.mode == "fixed":
            return self.color.to(dirs.dtype).expand(dirs.shape[0], 3)
        return torch.sigmoid(self.mlp(self.encoding(F.normalize(dirs, dim=-1, eps=1e-12))))
