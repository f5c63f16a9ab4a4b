"""Reward fine-tuning of the bundled shapes prior with the judge reward: guidance-free sampling (CFG 1) brought to the
CFG-3 prompt accuracy without reward hacking (issue 21's image figure); ``python -m benchmarks.finetune --target
shapes`` runs it.

Every method fine-tunes the same rank-8 LoRA of the shapes prior (distill.finetune.lora_model) towards the judge
reward r = log p(shape) + log p(colour) of each sampled prompt, at CFG 1 (the fine-tuning samplers use the
conditional prediction only). Every ``--evals``-th of the run the LoRA model is evaluated on one fixed set of samples
(seed and prompts fixed before any run): 8 per prompt of the 40 basic prompts, DPM-Solver++ 25 steps, CFG 1, and the
same for the base at CFG 1 and CFG 3. Records {"target": "shapes", "method", "reward", "kl_or_w2", "seconds",
"accuracy", "iteration", "guidance"}: ``reward`` the mean judge reward of the samples, ``kl_or_w2`` their
judge-feature Frechet distance to held-out renders (benchmarks.priors' fid_judge), ``accuracy`` the judge's joint
shape-and-colour accuracy, ``seconds`` the fine-tuning time so far (evaluations excluded).

``world="v2"`` (``--target shapes-v2``): the camera-aware ``shapes-v2`` prior and any colour a person can name,
with judge-v2's albedo reward (log p(shape) - 1/2 (dE76 / 15)^2, `AlbedoJudgeReward`). The fine-tuning prompts are
the v2 training colour names *but* the 172 that `benchmarks.priors` scores (`training_colour_prompts`), so the
evaluation is held out from the fine-tuning: ``accuracy`` is benchmarks.priors' training_colour_accuracy rule
(shape right and CIEDE2000 < 15) on those 172 names, ``heldout_accuracy`` the same on the 172 held-out colour
names (never in any caption), ``kl_or_w2`` the judge-v2-feature Frechet distance of the first set's samples to
renders of the same (shape, colour) pairs (`shapes_v2.renders_for`). Records carry ``"target": "shapes-v2"``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from priorkit.apps.sampling import grid_image
from priorkit.distill.core.samplers import initial_noise, sample
from priorkit.distill.finetune.lora_model import with_lora
from priorkit.distill.finetune.reward import (
    AlbedoJudgeReward,
    JudgeReward,
    albedo_prompts,
    albedo_renders,
    judge_prompts,
)
from priorkit.distill.finetune.trainer import finetune, make_config
from priorkit.distill.loading import load_denoiser
from priorkit.distill.zoo import shapes
from priorkit.distill.zoo.judge import frechet_distance, judge_features, load_judge

# method label -> (registered method, config overrides); DRaFT-K is K = 1 (the paper's cheapest variant)
METHODS: dict[str, tuple[str, dict]] = {
    "draft_k1": ("draft", {"k": 1}),
    "adjoint_matching": ("adjoint_matching", {"steps": 20, "time_samples": 10}),
    "adjoint_matching_eps": ("adjoint_matching", {"steps": 20, "time_samples": 10, "weighting": "eps"}),
    "ddpo": ("ddpo", {"time_samples": 10}),
    "draft": ("draft", {"checkpoint": True}),
    "reward_weighted": ("reward_weighted", {}),  # its pool: run(pool=...)
}
EVAL_SEED, EVAL_PER_PROMPT, EVAL_STEPS = 5, 8, 25
PROMPTS = [(shapes.caption(s, c), s, c) for s in shapes.SHAPES for c in shapes.COLOUR_NAMES]


@torch.no_grad()
def evaluate(den, judge, guidance: float, per_prompt: int = EVAL_PER_PROMPT, seed: int = EVAL_SEED  # noqa: ANN001
             ) -> tuple[dict[str, float], torch.Tensor]:
    """Judge accuracy, mean judge reward and judge-feature Frechet distance of ``per_prompt`` samples of each basic
    prompt at CFG ``guidance``; also the images (in [0, 1], prompt-major)."""
    g = torch.Generator().manual_seed(seed)
    images, conds = [], []
    for i in range(0, len(PROMPTS), 10):
        cond = [p for p, _, _ in PROMPTS[i:i + 10] for _ in range(per_prompt)]
        x = initial_noise(den, (len(cond), *den.sample_shape), generator=g)
        y = sample(den, x, steps=EVAL_STEPS, solver="dpm++2m", cond=cond, guidance=guidance, progress=False)
        images.append(((y.clamp(-1, 1) + 1) / 2).float())
        conds += cond
    img = torch.cat(images)
    s_true, c_true = JudgeReward.labels(conds)
    s_idx, c_idx = judge.predict(img)
    accuracy = float(((s_idx == s_true) & (c_idx == c_true)).float().mean())
    reward = float(JudgeReward(judge)(img * 2 - 1, conds).mean())
    real, _, _ = shapes.held_out_renders(len(img), seed=seed)
    fid = frechet_distance(judge_features(judge, img), judge_features(judge, real))
    return {"accuracy": accuracy, "reward": reward, "kl_or_w2": fid}, img


V2_EVAL_PER_PROMPT = 2  # benchmarks.priors' v2 figures take max(2, samples // 2) a prompt (4 by default): the same
# prompts and seeds, half the samples


def v2_eval_prompts() -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """(training-name prompts held out of the fine-tuning, held-out-name prompts): benchmarks.priors' two sets."""
    from priorkit.distill.zoo.shapes_v2 import held_out_prompts, training_colour_prompts

    held = [p for p in held_out_prompts() if any(p[0].endswith(" " + s) for s in shapes.SHAPES)]
    return training_colour_prompts(len(held)), held


@torch.no_grad()
def evaluate_v2(den, judge, guidance: float, per_prompt: int = V2_EVAL_PER_PROMPT  # noqa: ANN001
                ) -> tuple[dict[str, float], torch.Tensor]:
    """The v2 figures (module docstring) of ``den`` at CFG ``guidance``; also the first set's images in [0, 1]."""
    from benchmarks.priors import v2_accuracy
    from priorkit.distill.zoo.shapes_v2 import renders_for

    names, held = v2_eval_prompts()
    accuracy, img = v2_accuracy(den, judge, names, per_prompt, 13, guidance=guidance)  # benchmarks.priors' seeds
    heldout, _ = v2_accuracy(den, judge, held, per_prompt, 11, guidance=guidance)
    conds = [p for p, _, _ in names for _ in range(per_prompt)]
    reward = float(AlbedoJudgeReward(judge)(img * 2 - 1, conds).mean())
    real = renders_for([(s, c) for _, s, c in names], per_prompt, seed=EVAL_SEED)
    fid = frechet_distance(judge_features(judge, img), judge_features(judge, real))
    return {"accuracy": accuracy, "heldout_accuracy": heldout, "reward": reward, "kl_or_w2": fid}, img


TILT_SEEDS, TILT_REPEATS = (31, 37), 8  # the exact-tilt rows' base samples (names, held-out names); resamplings


@torch.no_grad()
def tilt_pool(den, judge, prompts: list[tuple[str, str, str]], k: int, seed: int  # noqa: ANN001
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``k`` samples of ``den`` at CFG 1 per (prompt, shape, colour) of ``prompts``: images in [0, 1] (P k, 3, H, W),
    their albedo rewards (P, k) and the v2 accuracy rule's hits (P, k), both float64."""
    from benchmarks.priors import STEPS, v2_hits

    reward, g = AlbedoJudgeReward(judge), torch.Generator().manual_seed(seed)
    images, rewards, hits = [], [], []
    for i in range(0, len(prompts), 8):
        chunk = prompts[i:i + 8]
        cond = [p for p, _, _ in chunk for _ in range(k)]
        x = initial_noise(den, (len(cond), *den.sample_shape), generator=g)
        y = sample(den, x, steps=STEPS, solver="dpm++2m", cond=cond, guidance=1.0, progress=False)
        img = ((y.clamp(-1, 1) + 1) / 2).float()
        images.append(img)
        rewards.append(reward(img * 2 - 1, cond))
        hits.append(v2_hits(judge, img, [(s, c) for _, s, c in chunk for _ in range(k)]))
        print(f"exact tilt: {i + len(chunk)} / {len(prompts)} prompts sampled x {k}", flush=True)
    return (torch.cat(images), torch.cat(rewards).view(len(prompts), k).double(),
            torch.cat(hits).view(len(prompts), k).double())


def tilted_reference(den, judge, lams: tuple[float, ...], k: int,  # noqa: ANN001
                     per_prompt: int = V2_EVAL_PER_PROMPT) -> list[tuple[dict, torch.Tensor]]:
    """What a perfect fine-tuning would reach: the exact tilt p(x | c) exp(r(x, c) / lambda) of ``den`` at CFG 1,
    estimated by self-normalised importance resampling of ``k`` of its samples per evaluation prompt (both sets,
    seeds TILT_SEEDS). Per lambda: the accuracies and the mean reward as weighted expectations, the Frechet distance
    as the mean over TILT_REPEATS resamplings of ``per_prompt`` samples a prompt (the evaluation's size, against the
    same renders; ``kl_or_w2_spread`` their standard deviation), ``ess`` the mean effective sample size of a
    prompt's k (the estimate leans towards the base where it is small). A first record, "base_pool" (lambda None),
    scores the same pool resampled uniformly: the base's figures on the same draws, the rows' paired baseline.
    Returns (record, the first resampling's images) for it and per lambda."""
    from priorkit.distill.finetune.tilt import effective_sample_size, tilt_weights, tilted_resample
    from priorkit.distill.zoo.shapes_v2 import renders_for

    if not lams or min(lams) <= 0:  # before the pools' half hour
        raise ValueError(f"the exact-tilt rows need lambdas > 0; got {lams}")
    if not 1 <= per_prompt <= k:
        raise ValueError(f"the rows resample {per_prompt} of {k} samples a prompt: k must be >= {per_prompt}")
    t0 = time.perf_counter()
    names, held = v2_eval_prompts()
    img, r, hit = tilt_pool(den, judge, names, k, TILT_SEEDS[0])
    _, r_held, hit_held = tilt_pool(den, judge, held, k, TILT_SEEDS[1])
    feats = judge_features(judge, img).view(len(names), k, -1)
    real = judge_features(judge, renders_for([(s, c) for _, s, c in names], per_prompt, seed=EVAL_SEED))
    seconds, rows = time.perf_counter() - t0, torch.arange(len(names)).unsqueeze(1)
    out = []
    for lam in (None, *lams):  # None: the base pool itself, resampled uniformly (the rows' paired baseline)
        score, temp = (torch.zeros_like(r), 1.0) if lam is None else (r, lam)
        w, g = tilt_weights(score, temp), torch.Generator().manual_seed(0)
        picks = [tilted_resample(score, temp, per_prompt, g) for _ in range(TILT_REPEATS)]
        fids = [frechet_distance(feats[rows, idx].flatten(0, 1), real) for idx in picks]
        w_held = tilt_weights(torch.zeros_like(r_held) if lam is None else r_held, temp)
        rec = {"method": "base_pool" if lam is None else "exact_tilt", "iteration": 0, "guidance": 1.0,
               "seconds": seconds, "lam": lam, "accuracy": float((w * hit).sum(1).mean()),
               "heldout_accuracy": float((w_held * hit_held).sum(1).mean()),
               "reward": float((w * r).sum(1).mean()), "kl_or_w2": sum(fids) / len(fids),
               "kl_or_w2_spread": float(torch.tensor(fids).std()), "tilt_samples": k,
               "ess": float(effective_sample_size(w).mean())}
        out.append((rec, img.view(len(names), k, *img.shape[1:])[rows, picks[0]].flatten(0, 1)))
    return out


def run(methods: tuple[str, ...], iterations: int, evals: int, out_dir: Path, json_path: Path, *, lr: float = 3e-4,
        lam: float = 0.5, batch: int = 8, rank: int = 8, prior: str | None = None, per_prompt: int | None = None,
        world: str = "v1", base_rows: bool = True, tilt_samples: int = 0,
        tilt_lams: tuple[float, ...] | None = None, pool: tuple[int, int] = (256, 16),
        pool_file: Path | None = None, data_weight: float = 0.0) -> list[dict]:
    """Base rows, then each method's curve; the JSON is rewritten after every evaluation (a partial run keeps its
    records). ``per_prompt`` overrides the evaluation's samples per prompt (a smoke run); ``world`` "v1" (the
    judge reward on the 40 basic prompts) or "v2" (module docstring); ``base_rows=False`` skips the untuned model's
    two rows (a longer run of one method beside an earlier full run); ``tilt_samples`` > 0 (v2 only) adds the
    exact-tilt rows (:func:`tilted_reference`, one per lambda of ``tilt_lams``, default ``(lam,)``); ``pool``
    reward_weighted's base samples (P prompts of the fine-tuning set, K each; their drawing counts in its
    ``seconds``), kept in (and read back from) ``pool_file`` when given; ``data_weight`` > 0 (v2, reward_weighted)
    adds that times the denoising loss on renders of the fine-tuning prompts (`albedo_renders`, the scored names
    excluded like the prompts)."""
    if data_weight and world != "v2":
        raise ValueError("--data-weight renders the v2 world's prompts: use --target shapes-v2")
    if tilt_samples and world != "v2":
        raise ValueError("the exact-tilt rows are for the v2 world (--target shapes-v2)")
    from priorkit.distill.zoo.judge import DEFAULT_DIR

    v2 = world == "v2"
    per_prompt = per_prompt or (V2_EVAL_PER_PROMPT if v2 else EVAL_PER_PROMPT)
    base = load_denoiser(prior or ("shapes-v2" if v2 else "shapes"))
    judge = load_judge(DEFAULT_DIR.parent / "judge-v2") if v2 else load_judge()
    target, picture = "shapes-v2" if v2 else "shapes", json_path.with_suffix(".png").name  # the grid beside its JSON
    score = (lambda den, g: evaluate_v2(den, judge, g, per_prompt)) if v2 else \
        (lambda den, g: evaluate(den, judge, g, per_prompt))
    reward = AlbedoJudgeReward(judge) if v2 else JudgeReward(judge)
    scored = [c for _, _, c in v2_eval_prompts()[0]] if v2 else []
    cond_fn = albedo_prompts(exclude=scored) if v2 else judge_prompts()
    data_fn = albedo_renders(exclude=scored) if data_weight else None
    records: list[dict] = []
    pictures: dict[str, torch.Tensor] = {}

    def add(rec: dict, img: torch.Tensor) -> None:
        records.append({"target": target, "reward_name": "albedo" if v2 else "judge", "lam": lam, **rec})
        json_path.write_text(json.dumps(records, indent=1))
        pictures[rec["method"] if rec["method"] != "base" else f"base_cfg{rec['guidance']:g}"] = img
        rows = [pictures[k][::per_prompt][:40] for k in pictures]  # one sample of each prompt per row, latest state
        grid_image(torch.cat(rows) * 2 - 1, ncol=40, scale=2).save(out_dir / picture)  # kept if stopped
        held = f"  held-out names {rec['heldout_accuracy']:.4f}" if "heldout_accuracy" in rec else ""
        print(f"{target} {rec['method']:>16} it {rec['iteration']:>4} CFG {rec['guidance']:g}: accuracy "
              f"{rec['accuracy']:.4f}{held}  reward {rec['reward']:.3f}  FID {rec['kl_or_w2']:.3f}  "
              f"({rec['seconds']:.0f} s)", flush=True)

    for guidance in (1.0, 3.0) if base_rows else ():
        m, img = score(base, guidance)
        add({"method": "base", "iteration": 0, "guidance": guidance, "seconds": 0.0, **m}, img)
    if tilt_samples:
        for rec, img in tilted_reference(base, judge, tilt_lams or (lam,), tilt_samples, per_prompt):
            add(rec, img)
            if rec["lam"] is not None:
                pictures[f"exact_tilt_lam{rec['lam']:g}"] = pictures.pop("exact_tilt")
    for label in methods:
        name, overrides = METHODS[label]
        torch.manual_seed(0)
        model, params = with_lora(base, rank=rank)
        config = make_config(name, lam=lam, batch=batch, prompts=pool[0], per_prompt=pool[1],
                             data_weight=data_weight or None, **overrides)
        clock = {"train": 0.0, "since": time.perf_counter()}

        def on_checkpoint(m_, step: int, label: str = label, clock: dict = clock) -> None:
            clock["train"] += time.perf_counter() - clock["since"]
            m_.eval()
            metrics, img = score(m_, 1.0)
            add({"method": label, "iteration": step, "guidance": 1.0, "seconds": clock["train"], **metrics,
                 **({"pool": list(pool), "data_weight": data_weight} if METHODS[label][0] == "reward_weighted"
                    else {})}, img)
            clock["since"] = time.perf_counter()

        finetune(name, model, base, reward, config, iterations=iterations, lr=lr, cond_fn=cond_fn, seed=0,
                 params=params, checkpoint_every=max(1, iterations // evals), pool_file=pool_file, data_fn=data_fn,
                 on_checkpoint=on_checkpoint, desc=f"{label} ({target}, {'albedo' if v2 else 'judge'})")
    print(f"rows of {out_dir / picture}: {', '.join(pictures)}")
    return records
