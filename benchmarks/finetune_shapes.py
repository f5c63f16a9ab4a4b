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
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from priorkit.apps.sampling import grid_image
from priorkit.distill.core.samplers import initial_noise, sample
from priorkit.distill.finetune.lora_model import with_lora
from priorkit.distill.finetune.reward import JudgeReward, judge_prompts
from priorkit.distill.finetune.trainer import finetune, make_config
from priorkit.distill.loading import load_denoiser
from priorkit.distill.zoo import shapes
from priorkit.distill.zoo.judge import frechet_distance, judge_features, load_judge

# method label -> (registered method, config overrides); DRaFT-K is K = 1 (the paper's cheapest variant)
METHODS: dict[str, tuple[str, dict]] = {
    "draft_k1": ("draft", {"k": 1}),
    "adjoint_matching": ("adjoint_matching", {"steps": 20, "time_samples": 10}),
    "ddpo": ("ddpo", {"time_samples": 10}),
    "draft": ("draft", {"checkpoint": True}),
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


def run(methods: tuple[str, ...], iterations: int, evals: int, out_dir: Path, json_path: Path, *, lr: float = 3e-4,
        lam: float = 0.5, batch: int = 8, rank: int = 8, prior: str = "shapes", per_prompt: int | None = None
        ) -> list[dict]:
    """Base rows, then each method's curve; the JSON is rewritten after every evaluation (a partial run keeps its
    records). ``per_prompt`` overrides the evaluation's samples per prompt (a smoke run)."""
    per_prompt = per_prompt or EVAL_PER_PROMPT
    base, judge = load_denoiser(prior), load_judge()
    records: list[dict] = []
    pictures: dict[str, torch.Tensor] = {}

    def add(rec: dict, img: torch.Tensor) -> None:
        records.append({"target": "shapes", "reward_name": "judge", "lam": lam, **rec})
        json_path.write_text(json.dumps(records, indent=1))
        pictures[rec["method"] if rec["method"] != "base" else f"base_cfg{rec['guidance']:g}"] = img
        rows = [pictures[k][::per_prompt][:40] for k in pictures]  # one sample of each prompt per row, latest state
        grid_image(torch.cat(rows) * 2 - 1, ncol=40, scale=2).save(out_dir / "finetune_shapes.png")  # kept if stopped
        print(f"shapes {rec['method']:>16} it {rec['iteration']:>4} CFG {rec['guidance']:g}: accuracy "
              f"{rec['accuracy']:.4f}  reward {rec['reward']:.3f}  FID {rec['kl_or_w2']:.3f}  "
              f"({rec['seconds']:.0f} s)", flush=True)

    for guidance in (1.0, 3.0):
        m, img = evaluate(base, judge, guidance, per_prompt)
        add({"method": "base", "iteration": 0, "guidance": guidance, "seconds": 0.0, **m}, img)
    for label in methods:
        name, overrides = METHODS[label]
        torch.manual_seed(0)
        model, params = with_lora(base, rank=rank)
        config = make_config(name, lam=lam, batch=batch, **overrides)
        clock = {"train": 0.0, "since": time.perf_counter()}

        def on_checkpoint(m_, step: int, label: str = label, clock: dict = clock) -> None:
            clock["train"] += time.perf_counter() - clock["since"]
            m_.eval()
            metrics, img = evaluate(m_, judge, 1.0, per_prompt)
            add({"method": label, "iteration": step, "guidance": 1.0, "seconds": clock["train"], **metrics}, img)
            clock["since"] = time.perf_counter()

        finetune(name, model, base, JudgeReward(judge), config, iterations=iterations, lr=lr,
                 cond_fn=judge_prompts(), seed=0, params=params, checkpoint_every=max(1, iterations // evals),
                 on_checkpoint=on_checkpoint, desc=f"{label} (shapes, judge)")
    print(f"rows of {out_dir / 'finetune_shapes.png'}: {', '.join(pictures)}")
    return records
