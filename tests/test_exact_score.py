"""SDS and VSD gradients against exact values (issue 18, part 2).

The prior is analytic: a class-conditional Gaussian mixture whose noisy score is known in closed form. The reference
values here are computed independently of ``priorkit.distill.core.gmm`` (torch.distributions and explicit linear
algebra), so a wrong CFG combination, a dropped or wrong weighting w(t), or a flipped sign fails a test.

- per draw: for the same (t, eps), the gradient equals w(t) (eps_cfg(x_t) - eps_ref) with
  eps_cfg = (1 - s) eps(x_t | null) + s eps(x_t | y) and eps(x_t | c) = -sigma_t grad log p_t(x_t | c);
- in expectation: for Gaussian priors the SDS gradient is linear in eps, so its mean over antithetic pairs
  (eps, -eps) is exactly the closed form E_eps[grad] = w(t) sigma_t alpha_t sum_c s_c C_c^{-1} (x - mu_c),
  C_c = alpha_t^2 S_c + sigma_t^2 I, with s_null = 1 - s, s_y = s; VSD subtracts the same term of the particles'
  own distribution (an exact score standing in for the LoRA).
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from priorkit.distill.core.cameras import random_cameras
from priorkit.distill.core.denoiser import Denoiser
from priorkit.distill.core.gmm import GaussianMixture
from priorkit.distill.core.schedule import FlowMatching, VPCosine
from priorkit.distill.score.guidance import GuidedPredictor, draw_noise, sds_gradient, vsd_gradient, weight
from priorkit.gen3d.sds import SDS, SDSConfig
from priorkit.gen3d.vsd import VSD, VSDConfig

torch.set_num_threads(1)
DT = torch.float64
SHAPE = (3, 2, 2)  # renders of 2x2 pixels: a pixel prior in D = 12
D = 12
PROMPTS = {"a red cube": 0, "a blue sphere": 1}


def _gaussians(seed: int, k: int, spread: float = 1.0) -> tuple[Tensor, Tensor]:
    """k random means (k, D) and full SPD covariances (k, D, D)."""
    g = torch.Generator().manual_seed(seed)
    means = spread * torch.randn(k, D, generator=g, dtype=DT)
    a = torch.randn(k, D, D, generator=g, dtype=DT) / D**0.5
    cov = 0.05 * torch.eye(D, dtype=DT) + 0.3 * a @ a.transpose(1, 2)
    return means, cov


class ClassPrior(Denoiser):
    """Exact class-conditional prior: prompt -> class c with p(x | c) = N(mu_c, S_c); the null condition -> ``null``.

    ``null``: a GaussianMixture (the class mixture itself, or any other analytic model of p(x)). Conditions are
    label tensors (B,); label -1 is the null condition. Pixel prior of ``SHAPE`` for gen3d's ``to_model_space``.
    """

    sample_shape = SHAPE

    def __init__(self, means: Tensor, cov: Tensor, null: GaussianMixture, schedule) -> None:
        super().__init__()
        self.schedule = schedule
        self.classes = [GaussianMixture(torch.ones(1, dtype=DT), m[None], c[None], schedule=schedule)
                        for m, c in zip(means, cov, strict=True)]
        self.null = null.with_schedule(schedule)

    def encode(self, cond):
        if isinstance(cond, Tensor):
            return cond
        return torch.tensor([PROMPTS[p] for p in cond], dtype=DT)

    def null_condition(self, cond):
        return torch.full_like(cond, -1.0)

    def predict_native(self, x, t, cond=None):
        out = torch.empty_like(x)
        labels = torch.full((x.shape[0],), -1.0, dtype=DT) if cond is None else cond
        tt = t.expand(x.shape[0]) if t.ndim == 1 and t.shape[0] == 1 else t.expand(x.shape[0]) if t.ndim == 0 else t
        for lab in labels.unique().tolist():
            rows = labels == lab
            model = self.null if lab < 0 else self.classes[int(lab)]
            out[rows] = model.predict_native(x[rows], tt[rows])[1]
        return "x0", out


def _mixture_prior(schedule) -> tuple[ClassPrior, Tensor, Tensor, Tensor]:
    """Two classes; p(x) (the null model) is their 0.3/0.7 mixture."""
    means, cov = _gaussians(0, 2)
    pis = torch.tensor([0.3, 0.7], dtype=DT)
    return ClassPrior(means, cov, GaussianMixture(pis, means, cov), schedule), means, cov, pis


def _ref_eps(x_t: Tensor, t: Tensor, schedule, pis: Tensor, means: Tensor, cov: Tensor) -> Tensor:
    """eps(x_t) = -sigma_t grad log p_t(x_t) of the mixture sum_k pi_k N(mu_k, S_k), by autograd of
    torch.distributions' log density of p_t = sum_k pi_k N(alpha mu_k, alpha^2 S_k + sigma^2 I), one row at a time."""
    out = torch.empty_like(x_t)
    for i in range(x_t.shape[0]):
        a, s = schedule.alpha(t[i]), schedule.sigma(t[i])
        comp = MultivariateNormal(a * means, covariance_matrix=a * a * cov + s * s * torch.eye(D, dtype=DT))
        p_t = MixtureSameFamily(Categorical(probs=pis), comp)
        xi = x_t[i].detach().clone().requires_grad_(True)
        (score,) = torch.autograd.grad(p_t.log_prob(xi), xi)
        out[i] = -s * score
    return out


def _ref_weight(kind: str, schedule, t: Tensor) -> Tensor:
    a, s = schedule.alpha(t), schedule.sigma(t)
    return {"uniform": torch.ones_like(t), "sigma2": s**2 / (a**2 + s**2), "snr_sqrt": s / (a**2 + s**2).sqrt()}[kind]


def _ref_cfg(x_t, t, schedule, label: int, scale: float, pis, means, cov) -> Tensor:
    cond = _ref_eps(x_t, t, schedule, torch.ones(1, dtype=DT), means[label:label + 1], cov[label:label + 1])
    null = _ref_eps(x_t, t, schedule, pis, means, cov)
    return null + scale * (cond - null)


# ---------------------------------------------------------------------------------------------------------------------
# the weighting itself, by value
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["uniform", "sigma2", "snr_sqrt"])
def test_weighting_by_value_on_a_schedule_where_alpha2_plus_sigma2_is_not_one(kind):
    """Flow matching: alpha^2 + sigma^2 != 1, so 1/(1 + SNR) differs from sigma^2 and the sqrt from sigma."""
    sched, t = FlowMatching(), torch.linspace(0.05, 0.95, 7, dtype=DT)
    torch.testing.assert_close(weight(kind, sched, t), _ref_weight(kind, sched, t), rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="weighting"):
        weight("sigma", sched, t)


# ---------------------------------------------------------------------------------------------------------------------
# per draw: the gradient SDS.loss puts on the renders
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weighting,scale", [("sigma2", 7.5), ("uniform", 3.0), ("snr_sqrt", 1.0)])
def test_sds_loss_gradient_on_renders_equals_the_exact_cfg_weighted_value(weighting, scale):
    """d SDS.loss / d images = (2 / B) w(t) (eps_cfg(x_t) - eps) with x = 2 images - 1 (pixel prior), for the same
    draws of (t, eps). Measured agreement ~1e-15 (float64); tested at 1e-10. Breaks if SDS.loss drops its CFG scale
    or its weighting, or if the sign of eps_hat - eps flips."""
    sched = FlowMatching()
    prior, means, cov, pis = _mixture_prior(sched)
    cfg = SDSConfig(guidance_scale=scale, warmup_guidance_scale=None, t_min=0.05, t_max=0.95, anneal="none",
                    weighting=weighting, view_dependent=False, grad_clip=None, prior_precision="float32")
    sds = SDS(prior, "a blue sphere", cfg)
    b = 6
    g = torch.Generator().manual_seed(3)
    images = (0.5 + 0.3 * torch.randn(b, *SHAPE, generator=g, dtype=DT)).requires_grad_(True)
    cams = random_cameras(b, g)
    loss, info = sds.loss(images, cams, 0.5, torch.Generator().manual_seed(7))
    loss.backward()
    assert info["guidance_scale"] == scale

    x = (images.detach() * 2 - 1).reshape(b, D)
    t, eps = draw_noise(x, 0.05, 0.95, torch.Generator().manual_seed(7))  # the draws SDS.loss made
    a, s = sched.alpha(t)[:, None], sched.sigma(t)[:, None]
    eps_cfg = _ref_cfg(a * x + s * eps, t, sched, 1, scale, pis, means, cov)
    expected = (2.0 / b) * _ref_weight(weighting, sched, t)[:, None] * (eps_cfg - eps)
    torch.testing.assert_close(images.grad.reshape(b, D), expected, rtol=1e-10, atol=1e-12)
    # the check has power: CFG 1 (no guidance) and w = 1 are far from it
    off_cfg = (2.0 / b) * _ref_weight(weighting, sched, t)[:, None] * (
        _ref_eps(a * x + s * eps, t, sched, pis, means, cov) - eps)
    if scale != 1.0:
        assert (images.grad.reshape(b, D) - off_cfg).abs().max() > 1e-3
    if weighting != "uniform":
        assert (images.grad.reshape(b, D) - (2.0 / b) * (eps_cfg - eps)).abs().max() > 1e-3


def test_sds_gradient_per_draw_under_a_vp_schedule():
    """The function gen3d and the trainers share, under VP-cosine (alpha^2 + sigma^2 = 1), per row."""
    sched = VPCosine()
    prior, means, cov, pis = _mixture_prior(sched)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, D, generator=g, dtype=DT)
    t = torch.tensor([0.05, 0.3, 0.5, 0.7, 0.95], dtype=DT)
    eps = torch.randn(5, D, generator=g, dtype=DT)
    label = torch.zeros(5, dtype=DT)
    got = sds_gradient(GuidedPredictor(prior, label, 5.0), sched, x.reshape(5, *SHAPE), t,
                       eps.reshape(5, *SHAPE), "sigma2").reshape(5, D)
    a, s = sched.alpha(t)[:, None], sched.sigma(t)[:, None]
    want = s**2 * (_ref_cfg(a * x + s * eps, t, sched, 0, 5.0, pis, means, cov) - eps)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# in expectation: the closed form
# ---------------------------------------------------------------------------------------------------------------------


def _gaussian_prior(schedule) -> tuple[ClassPrior, Tensor, Tensor]:
    """Class 0 ~ N(mu_0, S_0); the null model a different Gaussian N(mu_n, S_n): every eps is linear in x_t."""
    means, cov = _gaussians(5, 2)
    null = GaussianMixture(torch.ones(1, dtype=DT), means[1:], cov[1:])
    return ClassPrior(means[:1], cov[:1], null, schedule), means, cov


def _closed_form(x: Tensor, t: float, schedule, terms: list[tuple[float, Tensor, Tensor]], weighting: str) -> Tensor:
    """w(t) sigma alpha sum_c coef_c C_c^{-1} (x - mu_c), C_c = alpha^2 S_c + sigma^2 I; x (B, D)."""
    tt = torch.tensor(t, dtype=DT)
    a, s = schedule.alpha(tt), schedule.sigma(tt)
    out = torch.zeros_like(x)
    for coef, mu, cov in terms:
        c = a * a * cov + s * s * torch.eye(D, dtype=DT)
        out = out + coef * torch.linalg.solve(c, (x - mu).T).T
    return _ref_weight(weighting, schedule, tt) * s * a * out


def _antithetic(n: int, b: int, seed: int) -> Tensor:
    e = torch.randn(n, b, D, generator=torch.Generator().manual_seed(seed), dtype=DT)
    return torch.cat([e, -e])


@pytest.mark.parametrize("schedule", [FlowMatching(), VPCosine()], ids=["flow", "vp_cosine"])
@pytest.mark.parametrize("scale,weighting", [(7.5, "sigma2"), (1.0, "snr_sqrt"), (20.0, "uniform")])
def test_expected_sds_gradient_equals_the_closed_form(schedule, scale, weighting):
    """E_eps[sds_gradient] at fixed t = w sigma alpha [(1 - s) C_n^{-1}(x - mu_n) + s C_0^{-1}(x - mu_0)].
    Averaged over 8 antithetic pairs it is exact (the gradient is affine in eps): measured ~1e-15, tested 1e-9."""
    prior, means, cov = _gaussian_prior(schedule)
    b, t = 4, 0.4
    x = torch.randn(b, D, generator=torch.Generator().manual_seed(6), dtype=DT)
    pred = GuidedPredictor(prior, torch.zeros(b, dtype=DT), scale)
    tt = torch.full((b,), t, dtype=DT)
    grads = torch.stack([sds_gradient(pred, schedule, x.reshape(b, *SHAPE), tt, e.reshape(b, *SHAPE), weighting)
                         for e in _antithetic(8, b, 8)]).reshape(-1, b, D)
    want = _closed_form(x, t, schedule, [(1.0 - scale, means[1], cov[1]), (scale, means[0], cov[0])], weighting)
    torch.testing.assert_close(grads.mean(0), want, rtol=1e-9, atol=1e-12)
    # and with plain Monte Carlo draws the mean converges to it (within 5 standard errors)
    n = 4000
    eps = torch.randn(n, D, generator=torch.Generator().manual_seed(9), dtype=DT)
    mc = sds_gradient(GuidedPredictor(prior, torch.zeros(n, dtype=DT), scale), schedule,
                      x[:1].expand(n, D).reshape(n, *SHAPE), torch.full((n,), t, dtype=DT), eps.reshape(n, *SHAPE),
                      weighting).reshape(n, D)
    se = mc.std(0) / n**0.5
    assert ((mc.mean(0) - want[0]).abs() < 5 * se + 1e-12).all()


def test_descent_on_the_expected_sds_gradient_moves_towards_the_guided_mode():
    """Sign: x <- x - lr E[grad] decreases the distance to the conditional mean (CFG 1, single Gaussian)."""
    sched = FlowMatching()
    prior, means, cov = _gaussian_prior(sched)
    x = means[:1] + 3.0
    e = _antithetic(4, 1, 10)
    pred = GuidedPredictor(prior, torch.zeros(1, dtype=DT), 1.0)
    grad = torch.stack([sds_gradient(pred, sched, x.reshape(1, *SHAPE), torch.full((1,), 0.5, dtype=DT),
                                     ei.reshape(1, *SHAPE)) for ei in e]).mean(0).reshape(1, D)
    assert float((x - 0.5 * grad - means[0]).norm()) < float((x - means[0]).norm()) - 0.1


# ---------------------------------------------------------------------------------------------------------------------
# VSD with an exact score of the particles' own distribution
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale,weighting", [(7.5, "sigma2"), (1.0, "uniform")])
def test_expected_vsd_gradient_equals_the_closed_form(scale, weighting):
    """Particles ~ q = N(m_q, V_q), its exact score standing in for the LoRA:
    E_eps[vsd] = w sigma alpha [(1 - s) C_n^{-1}(x - mu_n) + s C_0^{-1}(x - mu_0) - C_q^{-1}(x - m_q)]."""
    sched = FlowMatching()
    prior, means, cov = _gaussian_prior(sched)
    mq, vq = _gaussians(11, 1)
    q = GaussianMixture(torch.ones(1, dtype=DT), mq, vq, schedule=sched)
    b, t = 4, 0.6
    x = q.sample(b, torch.Generator().manual_seed(12))  # the particles
    pre = GuidedPredictor(prior, torch.zeros(b, dtype=DT), scale)
    fake = GuidedPredictor(q, None, 1.0)
    tt = torch.full((b,), t, dtype=DT)
    grads = torch.stack([vsd_gradient(pre, fake, sched, x.reshape(b, *SHAPE), tt, e.reshape(b, *SHAPE), weighting)
                         for e in _antithetic(8, b, 13)]).reshape(-1, b, D)
    want = _closed_form(x, t, sched, [(1.0 - scale, means[1], cov[1]), (scale, means[0], cov[0]),
                                      (-1.0, mq[0], vq[0])], weighting)
    torch.testing.assert_close(grads.mean(0), want, rtol=1e-9, atol=1e-12)


def test_vsd_gradient_per_draw_with_the_particles_empirical_score():
    """The particles' own distribution as the empirical mixture of deltas (an exact, data-free 'LoRA'): per draw the
    gradient is w(t) (eps_cfg(x_t) - eps_q(x_t)) with eps_q of the mixture of N(alpha x_j, sigma^2 I)."""
    sched = VPCosine()
    prior, means, cov, pis = _mixture_prior(sched)
    b = 5
    g = torch.Generator().manual_seed(14)
    x = means[1] + 0.8 * torch.randn(b, D, generator=g, dtype=DT)
    empirical = GaussianMixture(torch.ones(b, dtype=DT), x, torch.zeros(b, D, dtype=DT), schedule=sched)
    t = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9], dtype=DT)
    eps = torch.randn(b, D, generator=g, dtype=DT)
    got = vsd_gradient(GuidedPredictor(prior, torch.ones(b, dtype=DT), 4.0), GuidedPredictor(empirical, None, 1.0),
                       sched, x.reshape(b, *SHAPE), t, eps.reshape(b, *SHAPE), "sigma2").reshape(b, D)
    a, s = sched.alpha(t)[:, None], sched.sigma(t)[:, None]
    x_t = a * x + s * eps
    eps_q = _ref_eps(x_t, t, sched, torch.full((b,), 1.0 / b, dtype=DT), x, torch.zeros(b, D, D, dtype=DT))
    want = s**2 * (_ref_cfg(x_t, t, sched, 1, 4.0, pis, means, cov) - eps_q)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_vsd_descent_moves_the_particle_distribution_towards_the_prior():
    """Sign: same covariances, q shifted by delta from the prior: E[vsd] = w sigma alpha C^{-1} delta for every
    particle, so x <- x - lr E[grad] moves q's mean to the prior's."""
    sched = FlowMatching()
    means, cov = _gaussians(15, 1)
    prior = ClassPrior(means, cov, GaussianMixture(torch.ones(1, dtype=DT), means, cov), sched)
    q = GaussianMixture(torch.ones(1, dtype=DT), means + 1.0, cov, schedule=sched)
    b = 3
    x = q.sample(b, torch.Generator().manual_seed(16))
    tt = torch.full((b,), 0.5, dtype=DT)
    grads = torch.stack([vsd_gradient(GuidedPredictor(prior, torch.zeros(b, dtype=DT), 1.0),
                                      GuidedPredictor(q, None, 1.0), sched, x.reshape(b, *SHAPE), tt,
                                      e.reshape(b, *SHAPE)) for e in _antithetic(4, b, 17)]).mean(0).reshape(b, D)
    torch.testing.assert_close(grads, grads[:1].expand(b, D), rtol=1e-9, atol=1e-12)  # the same for every particle
    before = float((x.mean(0) - means[0]).norm())
    after = float((x.mean(0) - 0.5 * grads.mean(0) - means[0]).norm())
    assert after < before - 0.1


# ---------------------------------------------------------------------------------------------------------------------
# VSD.loss (gen3d) passes its CFG scale and weighting
# ---------------------------------------------------------------------------------------------------------------------


class _HashText(nn.Module):
    def forward(self, prompts: list[str]) -> Tensor:
        out = []
        for p in prompts:
            g = torch.Generator().manual_seed(sum(ord(c) * (i + 1) for i, c in enumerate(p)) % (2**31))
            out.append(torch.randn(4, 8, generator=g))
        return torch.stack(out)


@pytest.mark.parametrize("weighting", ["sigma2", "uniform"])
def test_vsd_loss_gradient_at_init_is_the_cfg_difference(weighting):
    """At initialisation the LoRA branch is the pretrained conditional model exactly, so the particle gradient of
    VSD.loss is w(t) (eps_cfg - eps_cond) = w(t) (s - 1)(eps_cond - eps_null) for the same draws; with the pixel map
    x = 2 images - 1, d loss / d images = 2 particle_weight grad / views. Breaks if VSD.loss drops its CFG scale (the
    gradient would vanish) or its weighting; measured agreement ~1e-7 (float32), tested at 1e-5."""
    from diffusers import UNet2DConditionModel

    from priorkit.distill.core.diffusers_adapter import DiffusersDenoiser
    from priorkit.distill.score.lora import camera_features, pretrained_branch

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                block_out_channels=(16, 32), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=8,
                                attention_head_dim=8, norm_num_groups=8).eval()
    den = DiffusersDenoiser(unet, {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000,
                                   "beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction"},
                            text_encoder=_HashText())
    scale, b = 7.5, 3
    cfg = VSDConfig(guidance_scale=scale, t_min=0.1, t_max=0.9, anneal="none", weighting=weighting,
                    view_dependent=False, particle_weight=0.5, prior_precision="float32")
    vsd = VSD(den, "a red cube", cfg)
    try:
        g = torch.Generator().manual_seed(1)
        images = torch.rand(b, 3, 8, 8, generator=g).requires_grad_(True)
        cams = random_cameras(b, g)
        loss, _ = vsd.loss(images, cams, 0.3, torch.Generator().manual_seed(2))
        loss.backward()
        x = images.detach() * 2 - 1
        t, eps = draw_noise(x, 0.1, 0.9, torch.Generator().manual_seed(2))
        text = den.encode(["a red cube"] * b)
        with torch.no_grad():
            x_t = den.schedule.alpha(t)[:, None, None, None] * x + den.schedule.sigma(t)[:, None, None, None] * eps
            with pretrained_branch(unet):
                e_cfg = den.guided(x_t, t, text, scale).eps
                e_cond = den(x_t, t, text).eps
            e_lora = den(x_t, t, {"text": text, "class_labels": camera_features(cams)}).eps
        torch.testing.assert_close(e_lora, e_cond, rtol=0, atol=0)  # the LoRA starts as the pretrained model
        w = _ref_weight(weighting, den.schedule, t.double()).float()[:, None, None, None]
        expected = 2 * 0.5 * w * (e_cfg - e_cond) / b
        assert expected.abs().max() > 1e-3
        torch.testing.assert_close(images.grad, expected, rtol=1e-5, atol=1e-6)
    finally:
        vsd.close()
