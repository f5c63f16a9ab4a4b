"""The main job on the bundled defaults: ``python -m apps.demo`` (``make demo``) writes into ``outputs/``.

Today: ODE sampling of an analytic Gaussian mixture against its exact samples (Euler vs DPM-Solver++
at a few steps), and a sample grid from the bundled "shapes" text-to-image prior when its weights exist.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from distill.gmm import GaussianMixture
from distill.samplers import sample


def gmm_demo(out: Path) -> Path:
    """Scatter plots: exact mixture samples vs. Euler and DPM-Solver++(2M) at 4, 8 and 16 steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = torch.Generator().manual_seed(0)
    angles = torch.arange(8, dtype=torch.float64) * (2 * torch.pi / 8)
    means = 2.0 * torch.stack([angles.cos(), angles.sin()], 1)
    gmm = GaussianMixture(torch.ones(8), means, torch.full((8, 2), 0.03, dtype=torch.float64))
    exact = gmm.sample(4000, generator=g)
    noise = torch.randn(4000, 2, generator=g, dtype=torch.float64)
    fig, axes = plt.subplots(2, 4, figsize=(12, 6), dpi=90, sharex=True, sharey=True)
    for row, solver in enumerate(("euler", "dpm++2m")):
        axes[row, 0].scatter(*exact.T, s=1, c="k")
        axes[row, 0].set_title("exact samples")
        for col, steps in enumerate((4, 8, 16), start=1):
            x = sample(gmm, noise, steps=steps, solver=solver)
            axes[row, col].scatter(*x.T, s=1, c="tab:blue" if solver == "euler" else "tab:red")
            axes[row, col].set_title(f"{solver}, {steps} steps")
    for ax in axes.flat:
        ax.set_aspect("equal")
        ax.set_xlim(-3.2, 3.2)
        ax.set_ylim(-3.2, 3.2)
    fig.tight_layout()
    path = out / "gmm_ode_sampling.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def shapes_demo(out: Path) -> Path | None:
    """A grid from the bundled text-to-image prior (skipped with a message when its weights are missing)."""
    from apps.sampling import sample_grid
    from distill.loading import ModelLoadError, bundled_path

    try:
        bundled_path("shapes")
    except ModelLoadError as e:
        print(f"skipping the shapes prior: {e}")
        return None
    prompts = ["a red cube", "a blue sphere", "a green torus", "a yellow cone", "a purple cylinder"]
    return sample_grid("shapes", prompts, n=8, steps=25, guidance=3.0, seed=0, out=out / "shapes_samples.png")


def main() -> None:
    out = Path("outputs")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    made = [gmm_demo(out), shapes_demo(out)]
    for p in made:
        if p is not None:
            print(f"wrote {p}")
    print(f"done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
