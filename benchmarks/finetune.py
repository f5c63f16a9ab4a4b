"""Reward fine-tuning, measured against the exact tilted distribution.

    python -m benchmarks.finetune --json outputs/bench/finetune.json [--iterations 600] [--quick]
    python -m benchmarks.finetune --target shapes --json outputs/bench/finetune_shapes.json  (finetune_shapes)
    python -m benchmarks.finetune --target shapes-v2 --json outputs/bench/finetune_shapes_v2.json  (the same, v2)

2D: the ring of 8 Gaussians (distill.zoo.toy.gmm_target) as the exact base model, the quadratic reward
r(x) = -|x - (2, 0)|^2 / 2 (highest on the ring's right-hand component), and lambda in {1, 0.5}; the target
p(x) exp(r(x) / lambda) is again a Gaussian mixture (distill.finetune.tilt). A bounded reward: DRaFT and DDPO, which
maximise it without a KL term, collapse towards its maximum instead of running off to infinity. Every
method fine-tunes the same score-residual network (distill.finetune.residual: ``--residual vector``, the default since
2026-12-07, a network of Fourier features of the scaled input and of the log-SNR; ``gradient``, the gradient of a
scalar network of the same, or ``both``, their sum; ``mlp``, the network of the earlier figures) for the same number
of iterations and batch; samples come from the fine-tuned memoryless sampler on the grid it was trained on
(``--steps``, default 40; ``--eval-steps N`` samples on another grid: the control is a function of continuous t, but
measured 2026-12-05 it is fitted to its training grid, W2 0.116 -> 0.137 at 200 steps). Records carry ``steps``,
``eval_steps``, ``spacing`` (``--spacing``, the memoryless grid's), ``residual``, ``seed`` (``--seed``, the training
seed), ``grad_clip``, ``ema`` and ``batch`` (``--batch``, trajectories per iteration): the settings of the run; the
reference rows carry them too, unaffected by them except the grid's (the floors are sampled on it).

Records {"target", "method", "reward", "kl_or_w2", "seconds"}: ``kl_or_w2`` is the sliced W2 between 4000 samples
and 4000 exact tilted samples; ``reward`` the mean reward of the samples. Reference rows per target:
``exact_resample`` (two exact sample sets: the sampling floor), ``base_sampler_floor`` (the untuned sampler against
exact base samples: the discretisation floor), ``tilted_sampler_floor`` (the exact fine-tuned model, i.e. the tilted
mixture's own denoiser, sampled on the same memoryless grid, against the target: the floor of a perfectly fine-tuned
model on this sampler — measured 2026-12-06 at 40 steps 0.193 / 0.147 for lambda 1 / 0.5, at 200 steps 0.071 /
0.028, against resample floors 0.048 / 0.030) and ``base`` (the untuned model against the tilted target).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.finetune_shapes import METHODS as SHAPES_METHODS
from priorkit.distill.core.gmm import GaussianMixture
from priorkit.distill.core.samplers import initial_noise
from priorkit.distill.finetune.memoryless import SPACINGS, memoryless_times, trajectory
from priorkit.distill.finetune.residual import FourierResidual, ResidualDenoiser, ScoreResidual
from priorkit.distill.finetune.reward import QuadraticReward
from priorkit.distill.finetune.tilt import full_covariances, tilted_gmm
from priorkit.distill.finetune.trainer import finetune, make_config
from priorkit.distill.zoo.toy import gmm_target, sliced_w2

METHODS = ("adjoint_matching", "draft", "ddpo", "reward_weighted")
LAMBDAS = (1.0, 0.5)
STEPS = 40
N_EVAL = 4000
BATCH = 256  # trajectories per iteration (every method)
LR = {"adjoint_matching": 2e-3, "draft": 1e-3, "ddpo": 1e-3, "reward_weighted": 2e-3}
RESIDUALS = ("vector", "gradient", "both", "mlp")  # FourierResidual's parts, or ScoreResidual


def mixture_std(gmm: GaussianMixture) -> float:
    """sqrt of the mixture's variance averaged over the axes (the residual network's input scale)."""
    w = gmm.log_weights.exp()
    mean = w @ gmm.means
    second = w @ (torch.diagonal(full_covariances(gmm), dim1=-2, dim2=-1) + gmm.means**2)
    return float((second - mean**2).clamp_min(0).mean().sqrt())


def residual_network(kind: str, base: GaussianMixture) -> torch.nn.Module:
    """The score-residual network every method fine-tunes (float64)."""
    if kind in FourierResidual.PARTS:
        return FourierResidual(base.schedule, base.dim, parts=kind, data_std=mixture_std(base)).double()
    if kind == "mlp":
        return ScoreResidual(base.dim).double()
    raise ValueError(f"unknown residual network {kind!r}; expected one of {', '.join(RESIDUALS)}")


def w2(x: torch.Tensor, y: torch.Tensor) -> float:
    return sliced_w2(x, y, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def samples(model, n: int = N_EVAL, seed: int = 5, steps: int = STEPS,  # noqa: ANN001
            spacing: str = "logsnr") -> torch.Tensor:
    times = memoryless_times(model, steps, spacing=spacing)
    x = initial_noise(model, (n, 2), t_max=float(times[0]), generator=torch.Generator().manual_seed(seed),
                      dtype=torch.float64)
    return trajectory(model, x, times, generator=torch.Generator().manual_seed(seed + 1))[-1]


def exact_sets(base: GaussianMixture, reward: QuadraticReward, lambdas: tuple[float, ...]
               ) -> tuple[torch.Tensor, dict[float, tuple[torch.Tensor, torch.Tensor]]]:
    """Exact base samples and two exact tilted sample sets per lambda, the same whichever lambdas a run measures: the
    default lambdas' sets drawn in their order from one seed (as every record before 2026-12-07 drew them), any other
    lambda's from a seed of its own."""
    g = torch.Generator().manual_seed(1)
    base_exact = base.sample(N_EVAL, g)
    sets = {}
    for lam in LAMBDAS:
        target = tilted_gmm(base, reward, lam)
        sets[lam] = (target.sample(N_EVAL, g), target.sample(N_EVAL, g))
    for lam in lambdas:
        if lam not in sets:
            own = torch.Generator().manual_seed(int(round(lam * 1_000_000)) + 2)
            target = tilted_gmm(base, reward, lam)
            sets[lam] = (target.sample(N_EVAL, own), target.sample(N_EVAL, own))
    return base_exact, sets


def run(iterations: int, methods: tuple[str, ...], lambdas: tuple[float, ...], out_dir: Path,
        eval_steps: int = STEPS, steps: int = STEPS, residual: str = "vector", seed: int = 0,
        grad_clip: float = 1.0, ema: float = 0.0, batch: int = BATCH, spacing: str = "logsnr",
        pool: tuple[int, int] = (256, 16)) -> list[dict]:
    """Every method at every lambda; ``seed`` sets the residual network's initialisation and the training draws
    (the exact sample sets and the evaluation noise stay fixed); ``batch`` trajectories per iteration; ``spacing`` the
    memoryless grid's (training and evaluation; DRaFT trains on its own 20-step log-SNR grid, and every method is
    scored on this one); ``pool`` reward_weighted's (P, K): one row of P K base samples, drawn with ``steps``
    DPM-Solver++ steps."""
    base = gmm_target()
    reward = QuadraticReward(torch.tensor([2.0, 0.0], dtype=torch.float64), torch.eye(2, dtype=torch.float64))
    records: list[dict] = []
    base_exact, exact = exact_sets(base, reward, lambdas)
    base_floor = w2(samples(base, steps=eval_steps, spacing=spacing), base_exact)
    pictures = {}
    for lam in lambdas:
        name = f"ring8/quadratic/lambda={lam:g}"
        target, (ref, ref2) = tilted_gmm(base, reward, lam), exact[lam]
        floor = w2(ref2, ref)
        xb = samples(base, steps=eval_steps, spacing=spacing)
        xt = samples(target, steps=eval_steps, spacing=spacing)  # the exact fine-tuned model on the same sampler
        records += [
            {"target": name, "method": "exact_resample", "reward": float(reward(ref2).mean()),
             "kl_or_w2": floor, "seconds": 0.0},
            {"target": name, "method": "base_sampler_floor", "reward": float(reward(base_exact).mean()),
             "kl_or_w2": base_floor, "seconds": 0.0},
            {"target": name, "method": "tilted_sampler_floor", "reward": float(reward(xt).mean()),
             "kl_or_w2": w2(xt, ref), "seconds": 0.0},
            {"target": name, "method": "base", "reward": float(reward(xb).mean()), "kl_or_w2": w2(xb, ref),
             "seconds": 0.0}]
        pictures[(lam, "exact")] = ref
        for method in methods:
            torch.manual_seed(seed)
            model = ResidualDenoiser(base, residual_network(residual, base))
            cfg = make_config(method, lam=lam, steps=steps if method != "draft" else 20, batch=batch,
                              spacing=spacing, prompts=pool[0], per_prompt=pool[1])
            t0 = time.perf_counter()
            model, _ = finetune(method, model, base, reward, cfg, iterations=iterations, lr=LR[method],
                                dtype=torch.float64, desc=f"{method} lambda={lam:g}", seed=seed,
                                grad_clip=grad_clip, ema_decay=ema)
            seconds = time.perf_counter() - t0
            x = samples(model, steps=eval_steps, spacing=spacing)
            pictures[(lam, method)] = x
            rec = {"target": name, "method": method, "reward": float(reward(x).mean()), "kl_or_w2": w2(x, ref),
                   "seconds": seconds, **({"pool": list(pool)} if method == "reward_weighted" else {})}
            records.append(rec)
            print(f"{name} {method}: W2 {rec['kl_or_w2']:.4f} (floor {floor:.4f}), reward {rec['reward']:.3f}, "
                  f"{seconds:.0f}s", flush=True)
    scatter(pictures, lambdas, methods, out_dir / "finetune_2d.png")
    return [{**r, "eval_steps": eval_steps, "steps": steps, "residual": residual, "seed": seed,
             "grad_clip": grad_clip, "ema": ema, "batch": batch, "spacing": spacing}
            for r in records]


def scatter(pictures: dict, lambdas: tuple[float, ...], methods: tuple[str, ...], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = ("exact", *methods)
    fig, axes = plt.subplots(len(lambdas), len(cols), figsize=(3 * len(cols), 3 * len(lambdas)), squeeze=False)
    for i, lam in enumerate(lambdas):
        for j, col in enumerate(cols):
            ax = axes[i][j]
            if (lam, col) in pictures:
                x = pictures[(lam, col)][:2000]
                ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.4)
            ax.set_xlim(-3, 3)
            ax.set_ylim(-3, 3)
            ax.set_aspect("equal")
            ax.set_title(f"{col}, lambda={lam:g}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", choices=("2d", "shapes", "shapes-v2"), default="2d",
                    help="2d: the exact tilted Gaussian mixture; shapes: the shapes prior with the judge reward; "
                         "shapes-v2: the v2 prior, any named colour, judge-v2's albedo reward (held-out names)")
    ap.add_argument("--json", type=Path, default=None, help="default outputs/bench/finetune[_shapes].json")
    ap.add_argument("--iterations", type=int, default=None, help="default 600 (2d), 200 (shapes)")
    ap.add_argument("--methods", nargs="+", default=None,
                    help=f"2d: {', '.join(METHODS)}; shapes: {', '.join(SHAPES_METHODS)} (default: all)")
    ap.add_argument("--lambdas", nargs="+", type=float, default=None,
                    help=f"reward temperatures (default {', '.join(map(str, LAMBDAS))}; shapes: the first for the "
                         "fine-tuning, default 0.5, every one for the exact-tilt rows)")
    ap.add_argument("--steps", type=int, default=STEPS, help=f"memoryless steps of the fine-tuned sampler (default "
                    f"{STEPS}; DRaFT keeps its 20)")
    ap.add_argument("--eval-steps", type=int, default=None, help="memoryless steps of the evaluation samples "
                    "(default: --steps, the training grid)")
    ap.add_argument("--residual", choices=RESIDUALS, default="vector",
                    help="2d: the score-residual network (FourierResidual's parts: both, gradient, vector; mlp: "
                         "ScoreResidual, the network of the figures before 2026-12-07)")
    ap.add_argument("--spacing", choices=SPACINGS, default="logsnr", help="2d: the memoryless grid's spacing "
                    "(training and evaluation; DRaFT keeps its own 20-step log-SNR grid)")
    ap.add_argument("--seed", type=int, default=0, help="2d: the training seed (initialisation and draws)")
    ap.add_argument("--grad-clip", type=float, default=1.0, help="2d: the gradient norm's cap (0: none)")
    ap.add_argument("--ema", type=float, default=0.0, help="2d: EMA decay of the fine-tuned parameters (0: the last "
                    "iterate)")
    ap.add_argument("--evals", type=int, default=4, help="shapes: evaluations along each run (the curve's points)")
    ap.add_argument("--lr", type=float, default=3e-4, help="shapes: the LoRA's learning rate")
    ap.add_argument("--batch", type=int, default=None, help=f"samples per iteration (default {BATCH} (2d), 8 (shapes))")
    ap.add_argument("--no-base", action="store_true", help="shapes: skip the untuned model's rows (CFG 1 and 3)")
    ap.add_argument("--tilt-samples", type=int, default=0,
                    help="shapes-v2: add the exact-tilt rows (what a perfect fine-tuning reaches, one per --lambdas "
                         "value), estimated by importance resampling of this many base samples per prompt (16: "
                         "~40 min on one thread; 0: none)")
    ap.add_argument("--rows-only", action="store_true",
                    help="shapes: the reference rows only (base, exact tilt), no fine-tuning")
    ap.add_argument("--pool", nargs=2, type=int, default=None, metavar=("P", "K"),
                    help="reward_weighted: its pool of base samples, K for each of P prompts (default 256 16; 2d: one "
                         "unconditional row of P K)")
    ap.add_argument("--pool-file", type=Path, default=None,
                    help="shapes: reward_weighted's pool is read from this file when it holds the pool of the same "
                         "--pool (and seed), else drawn and written there (runs at other lambdas or rates share it; "
                         "the drawing time then counts in the first run's seconds only)")
    ap.add_argument("--data-weight", type=float, default=0.0,
                    help="shapes-v2, reward_weighted: add this times the denoising loss on renders of the fine-tuning "
                         "prompts (real data against drift, Lee et al. 2023; 0: none)")
    ap.add_argument("--quick", action="store_true", help="a few iterations of every method (a smoke run)")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.lambdas and min(args.lambdas) <= 0:
        ap.error(f"--lambdas must be > 0; got {args.lambdas}")
    if args.pool is not None and min(args.pool) < 1:
        ap.error(f"--pool P K must be >= 1 each; got {args.pool}")
    pool = tuple(args.pool) if args.pool else (2, 2) if args.quick else (256, 16)
    if args.batch is not None and args.batch < 1:
        ap.error(f"--batch must be >= 1; got {args.batch}")
    if args.grad_clip < 0 or not 0 <= args.ema < 1:
        ap.error(f"--grad-clip must be >= 0 and --ema in [0, 1); got {args.grad_clip}, {args.ema}")
    two_d_only = {"--residual": args.residual != "vector", "--seed": args.seed != 0,
                  "--spacing": args.spacing != "logsnr", "--grad-clip": args.grad_clip != 1.0,
                  "--ema": args.ema != 0.0}
    if args.tilt_samples < 0 or (args.tilt_samples and args.target != "shapes-v2"):
        ap.error(f"--tilt-samples must be >= 0 and is for --target shapes-v2; got {args.tilt_samples}")
    if args.tilt_samples == 1:
        ap.error("--tilt-samples 1 cannot tilt anything (one sample per prompt): use 0 or >= 2")
    if args.rows_only and not args.target.startswith("shapes"):
        ap.error("--rows-only is for the shapes targets")
    if args.rows_only and args.methods:
        ap.error("--rows-only runs no fine-tuning: drop --methods")
    if args.rows_only and args.no_base and not args.tilt_samples:
        ap.error("--rows-only --no-base without --tilt-samples would run nothing")
    if args.pool_file is not None and not args.target.startswith("shapes"):
        ap.error("--pool-file is for the shapes targets (the 2d pool takes seconds)")
    if args.target != "2d" and (given := [k for k, v in two_d_only.items() if v]):
        ap.error(f"{', '.join(given)}: 2d only (the shapes targets fine-tune a LoRA with their own settings)")
    known = SHAPES_METHODS if args.target.startswith("shapes") else METHODS
    methods = tuple(args.methods or known)
    if (args.pool or args.pool_file or args.data_weight) and ("reward_weighted" not in methods or args.rows_only):
        ap.error("--pool, --pool-file and --data-weight are reward_weighted's: add it to --methods (and drop "
                 "--rows-only)")
    if args.data_weight < 0 or (args.data_weight and args.target != "shapes-v2"):
        ap.error(f"--data-weight must be >= 0 and is for --target shapes-v2; got {args.data_weight}")
    if unknown := [m for m in methods if m not in known]:
        ap.error(f"unknown method(s) {', '.join(unknown)} for --target {args.target}; expected {', '.join(known)}")
    suffix = {"shapes": "_shapes", "shapes-v2": "_shapes_v2"}.get(args.target, "")
    json_path = args.json or Path(f"outputs/bench/finetune{suffix}.json")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    if args.target.startswith("shapes"):
        from benchmarks.finetune_shapes import run as run_shapes

        iterations = 2 if args.quick else (args.iterations or 200)
        lam = args.lambdas[0] if args.lambdas else 0.5
        records = run_shapes(() if args.rows_only else methods, iterations, min(args.evals, iterations),
                             json_path.parent, json_path,
                             lr=args.lr, lam=lam, batch=2 if args.quick else (args.batch or 8),
                             per_prompt=1 if args.quick else None, world="v2" if args.target == "shapes-v2" else "v1",
                             base_rows=not args.no_base, tilt_samples=args.tilt_samples,
                             tilt_lams=tuple(args.lambdas) if args.lambdas else None, pool=pool,
                             pool_file=args.pool_file, data_weight=args.data_weight)
        held = args.target == "shapes-v2"
        print("| method | iteration | CFG | judge accuracy |" + (" held-out names |" if held else "")
              + " mean reward | judge FID | seconds |")
        print("|---|---|---|---|" + ("---|" if held else "") + "---|---|---|")
        for r in records:
            extra = f" {r['heldout_accuracy']:.4f} |" if held else ""
            label = (f"exact tilt (lambda {r['lam']:g})" if r["method"] == "exact_tilt" else
                     "base (the exact-tilt rows' pool)" if r["method"] == "base_pool" else r["method"])
            print(f"| {label} | {r['iteration']} | {r['guidance']:g} | {r['accuracy']:.4f} |{extra} "
                  f"{r['reward']:.3f} | {r['kl_or_w2']:.3f} | {r['seconds']:.0f} |")
        print(f"wrote {json_path}")
        return
    iterations = 5 if args.quick else (args.iterations or 600)
    records = run(iterations, methods, tuple(args.lambdas or LAMBDAS), json_path.parent, args.eval_steps or args.steps,
                  args.steps, args.residual, args.seed, args.grad_clip, args.ema, args.batch or BATCH, args.spacing,
                  pool)
    json_path.write_text(json.dumps(records, indent=1))
    print("| target | method | reward | sliced W2 | seconds |\n|---|---|---|---|---|")
    for r in records:
        print(f"| {r['target']} | {r['method']} | {r['reward']:.3f} | {r['kl_or_w2']:.4f} | {r['seconds']:.0f} |")
    print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
