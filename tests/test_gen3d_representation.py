"""A second 3D representation through the unchanged text-to-3D loop: an analytic sphere with a learnable radius and
colour, defined here (not in the library), runs through ``generate`` with SDS and VSD, checkpoints and resumes."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
import trimesh
from torch import Tensor, nn

from priorkit.distill.core.diffusers_adapter import DiffusersDenoiser
from priorkit.gen3d import loop
from priorkit.gen3d.generate import GenerateConfig, generate
from priorkit.gen3d.guidance import Guidance
from priorkit.gen3d.representation import Representation
from priorkit.gen3d.sds import SDS, SDSConfig
from priorkit.gen3d.vsd import VSDConfig

torch.set_num_threads(1)


class SphereField(nn.Module):
    """A soft ball: sigma(x) = sigma0 sigmoid((r - |x|) / width) with a learnable radius r and colour
    sigmoid(colour_logits) (3,). Implements the Representation protocol directly (no library base class)."""

    def __init__(self, radius: float = 0.5, sigma0: float = 30.0, width: float = 0.05) -> None:
        super().__init__()
        self.radius = nn.Parameter(torch.tensor(float(radius)))
        self.color_logits = nn.Parameter(torch.zeros(3))
        self.sigma0, self.width = sigma0, width

    def density(self, x: Tensor) -> Tensor:
        """(N, 3) -> (N,)."""
        return self.sigma0 * torch.sigmoid((self.radius - x.norm(dim=-1)) / self.width)

    def normal(self, x: Tensor) -> Tensor:
        """Radial outward unit vectors, (N, 3) -> (N, 3)."""
        return F.normalize(x, dim=-1, eps=1e-12)

    def query(self, x: Tensor, with_normal: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
        rgb = torch.sigmoid(self.color_logits).expand(x.shape[0], 3)
        return rgb, self.density(x), self.normal(x) if with_normal else None

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"geometry": [self.radius], "appearance": [self.color_logits]}

    def regularisers(self) -> dict[str, Callable[[torch.Generator | None], Tensor]]:
        return {"tv": lambda g: (self.radius - 0.5).square()}  # its own term, weighted by the loop's lambda_tv

    def extract_mesh(self, resolution: int) -> trimesh.Trimesh:
        r = float(self.radius.detach())
        if r <= 0:
            raise ValueError("the sphere vanished")
        mesh = trimesh.creation.icosphere(subdivisions=2, radius=r)
        rgb = (torch.sigmoid(self.color_logits.detach()) * 255).round().byte().tolist()
        mesh.visual.vertex_colors = [*rgb, 255]
        return mesh


class HashText(nn.Module):
    """Prompts -> fixed pseudo-random states (B, 4, 8) (a stand-in text encoder)."""

    def forward(self, prompts: list[str]) -> Tensor:
        gens = [torch.Generator().manual_seed(sum(ord(c) * (i + 1) for i, c in enumerate(p)) % 2**31) for p in prompts]
        return torch.stack([torch.randn(4, 8, generator=g) for g in gens])


@pytest.fixture()
def prior() -> DiffusersDenoiser:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                block_out_channels=(16, 32), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=8,
                                attention_head_dim=8, norm_num_groups=8).eval()
    scheduler = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2",
                 "prediction_type": "v_prediction"}
    return DiffusersDenoiser(unet, scheduler, text_encoder=HashText())


def small_config(**kw) -> GenerateConfig:
    base = dict(resolution=12, n_samples=16, lr=0.02, export_resolution=24, turntable_frames=2, turntable_size=12,
                preview_views=2, preview_size=12, lambda_tv=1.0, sds=SDSConfig(views=2, steps=3),
                vsd=VSDConfig(views_per_particle=1, steps=3))
    return GenerateConfig(**{**base, **kw})


def test_the_sphere_is_a_representation_and_the_loop_names_no_concrete_part(prior):
    assert isinstance(SphereField(), Representation)
    assert isinstance(SDS(prior, "a red ball"), Guidance)
    tree = ast.parse(inspect.getsource(loop))
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert not names & {"VoxelField", "SDS", "VSD", "SDSConfig", "VSDConfig", "vsd", "sds", "hasattr"}


@pytest.mark.parametrize("method, particles", [("sds", 1), ("vsd", 2)])
def test_an_analytic_sphere_runs_through_the_loop(prior, tmp_path, method, particles):
    result = generate("a red ball", method, prior, particles=particles, seed=1, out=tmp_path, progress=False,
                      config=small_config(), representation=SphereField)
    assert len(result.history) == 3
    assert all(torch.isfinite(torch.tensor(h["loss"])) and h["reg"] > 0 for h in result.history)  # its "tv" term
    for f in result.fields:
        assert isinstance(f, SphereField)
        assert float(f.radius.detach()) != 0.5 and not torch.equal(f.color_logits, torch.zeros(3))  # both groups moved
    assert all(isinstance(m, trimesh.Trimesh) and len(m.faces) > 0 for m in result.meshes)
    assert len(result.paths["glb"]) == particles and all(p.is_file() for p in result.paths["glb"])
    assert result.turntables[0].shape == (2, 12, 12, 3)
    if method == "vsd":
        assert prior.unet.class_embedding is None  # the guidance closed


class _KilledError(Exception):
    pass


def test_the_sphere_resumes_exactly(prior, tmp_path):
    cfg = small_config()
    full = generate("a red ball", "vsd", prior, particles=2, seed=2, out=tmp_path / "full", progress=False,
                    config=cfg, representation=SphereField)

    def kill(step, info):
        if step == 2:
            raise _KilledError

    with pytest.raises(_KilledError):
        generate("a red ball", "vsd", prior, particles=2, seed=2, out=tmp_path / "run", checkpoint_every=1,
                 progress=False, config=cfg, representation=SphereField, callback=kill)
    resumed = generate("a red ball", "vsd", prior, particles=2, seed=2, out=tmp_path / "run", resume=True,
                       progress=False, config=cfg, representation=SphereField)
    for a, b in zip(full.fields, resumed.fields, strict=True):
        assert torch.equal(a.radius, b.radius) and torch.equal(a.color_logits, b.color_logits)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]


def test_old_config_names_still_work_with_a_warning():
    with pytest.warns(DeprecationWarning, match="vsd.steps"):
        cfg = GenerateConfig(vsd_steps=7)
    assert cfg.vsd.steps == 7 and GenerateConfig().vsd.steps == VSDConfig().steps
    with pytest.warns(DeprecationWarning, match="sds.views"):
        cfg.views = 3
    assert cfg.sds.views == 3
    with pytest.warns(DeprecationWarning):
        assert cfg.steps == SDSConfig().steps
