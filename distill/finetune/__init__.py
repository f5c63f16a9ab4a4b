"""Reward fine-tuning of a pretrained diffusion or flow model, on the general schedule x_t = alpha x0 + sigma eps.

* ``reward``: the `Reward` interface and built-ins (the judge's log-probability of a prompt, brightness, a target
  colour, linear and quadratic rewards for exact 2D tests, any callable).
* ``tilt``: the tilted distribution p(x) exp(r(x) / lambda): exactly for a Gaussian mixture (linear / quadratic r),
  by importance resampling of any model's samples.
* ``memoryless``: the memoryless sampler (DDIM eta = 1: the reverse SDE whose noise end is independent of its data
  end), its trajectories, and the lean adjoint along them.
* ``residual``: a fine-tuned model as a frozen base plus a trainable score residual (2D and small models).
* ``adjoint_matching`` (Domingo-Enrich et al. 2024), ``draft`` (Clark et al. 2024: DRaFT, DRaFT-K, DRaFT-LV),
  ``ddpo`` (Black et al. 2023: policy gradient over the sampler's Gaussian steps, with ratio clipping),
  ``reward_weighted`` (reward-weighted regression, Peng et al. 2019 / Lee et al. 2023: the denoising loss on base
  samples weighted by exp(r / lambda), whose minimiser is the tilt's denoiser).
"""
