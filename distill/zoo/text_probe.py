"""What a text encoder carries about words a prior never saw: the ceiling of the shapes world v2's held-out figures.

A text-conditioned prior learns colour and shape only for the words of its training captions; for a held-out word
everything it can know arrives through the text encoder's embedding. These probes measure that ceiling without any
image: fit a map from the encoder's sentence embedding to the answer on the *training* words only, then score it on
the held-out words with the benchmark's own rule.

* :func:`colour_probe_accuracy`: ridge regression (closed form, the penalty chosen by k-fold cross-validation on the
  training names) and a small MLP from the embedding of "a {name} sphere" to CIELAB; a held-out name is right when
  CIEDE2000(predicted, named colour) < :data:`~priorkit.distill.zoo.colours.DELTA_E_THRESHOLD`.
* :func:`shape_word_probe_accuracy`: a held-out shape word is right when its embedding is nearest (cosine) to a
  training word of its own shape.

A prior cannot be expected to beat the better probe by much on held-out words: a figure far above it would mean the
held-out words leaked into training.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from priorkit.distill.zoo import colours

Encode = Callable[[list[str]], Tensor]  # prompts -> (B, D) sentence embeddings
COLOUR_TEMPLATE = "a {} sphere"
RIDGE_PENALTIES = (0.01, 0.1, 1.0, 10.0, 100.0)


def pooled(encoder: Callable[[list[str]], Tensor]) -> Encode:
    """The sentence embedding of a :class:`~priorkit.distill.core.text.MiniLMEncoder` (its first state)."""
    return lambda prompts: encoder(prompts)[:, 0].float()


def _lab(names: Sequence[str]) -> np.ndarray:
    table = colours.all_colours()
    return colours.rgb_to_lab(np.array([table[n] for n in names]))


def _accuracy(pred_lab: np.ndarray, names: Sequence[str]) -> float:
    target = np.array([colours.all_colours()[n] for n in names])
    return float((colours.delta_e(colours.lab_to_rgb(pred_lab), target) < colours.DELTA_E_THRESHOLD).mean())


def _ridge(x: np.ndarray, y: np.ndarray, penalty: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mx, my = x.mean(0), y.mean(0)
    xc = x - mx
    w = np.linalg.solve(xc.T @ xc + penalty * np.eye(x.shape[1]), xc.T @ (y - my))
    return w, mx, my


def ridge_penalty(x: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    """The penalty of :data:`RIDGE_PENALTIES` with the least k-fold squared error (training rows only)."""
    order = np.random.default_rng(seed).permutation(len(x))
    errors = []
    for penalty in RIDGE_PENALTIES:
        err = 0.0
        for k in range(folds):
            test = order[k::folds]
            train = np.setdiff1d(order, test)
            w, mx, my = _ridge(x[train], y[train], penalty)
            err += float((((x[test] - mx) @ w + my - y[test]) ** 2).sum())
        errors.append(err)
    return RIDGE_PENALTIES[int(np.argmin(errors))]


def _mlp(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, seed: int, iterations: int = 1500) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    xt, yt, xs = (torch.as_tensor(a, dtype=torch.float32) for a in (x, y, x_test))
    mx, sx, my, sy = xt.mean(0), xt.std(0) + 1e-6, yt.mean(0), yt.std(0) + 1e-6
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 256), torch.nn.GELU(), torch.nn.Dropout(0.2),
                              torch.nn.Linear(256, y.shape[1]))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (p.shape[-1] ** -0.5 if p.ndim == 2 else 0.0))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the dropout masks, without touching the caller's random state
        for _ in range(iterations):
            opt.zero_grad()
            loss = ((net((xt - mx) / sx) - (yt - my) / sy) ** 2).mean()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        return (net((xs - mx) / sx) * sy + my).numpy()


@torch.no_grad()
def colour_probe_accuracy(encode: Encode, train_names: Sequence[str], held_names: Sequence[str],
                          seed: int = 0) -> dict[str, float]:
    """Held-out colour accuracy of the ridge and MLP probes fitted on ``train_names`` ({"ridge", "mlp",
    "ridge_train"}: the last is the ridge probe on its own training names, the in-vocabulary reference)."""
    x_train = encode([COLOUR_TEMPLATE.format(n) for n in train_names]).double().numpy()
    x_held = encode([COLOUR_TEMPLATE.format(n) for n in held_names]).double().numpy()
    y_train = _lab(train_names)
    penalty = ridge_penalty(x_train, y_train, seed=seed)
    w, mx, my = _ridge(x_train, y_train, penalty)
    with torch.enable_grad():
        mlp = _mlp(x_train, y_train, x_held, seed)
    return {"ridge": _accuracy((x_held - mx) @ w + my, held_names),
            "mlp": _accuracy(mlp, held_names),
            "ridge_train": _accuracy((x_train - mx) @ w + my, train_names),
            "ridge_penalty": penalty}


@torch.no_grad()
def shape_word_probe_accuracy(encode: Encode, train_words: Mapping[str, Sequence[str]],
                              held_words: Mapping[str, Sequence[str]], colour: str = "red") -> float:
    """Share of held-out shape words whose embedding ("a red {word}") is nearest to a training word of their own
    shape (cosine similarity)."""
    labels = [s for s, ws in train_words.items() for _ in ws]
    bank = torch.nn.functional.normalize(
        encode([f"a {colour} {w}" for ws in train_words.values() for w in ws]).double(), dim=-1)
    asked = [(s, w) for s, ws in held_words.items() for w in ws]
    probe = torch.nn.functional.normalize(encode([f"a {colour} {w}" for _, w in asked]).double(), dim=-1)
    nearest = (probe @ bank.T).argmax(dim=1)
    return float(np.mean([labels[int(j)] == s for j, (s, _) in zip(nearest, asked, strict=True)]))


def shapes_v2_ceiling(encoder: Callable[[list[str]], Tensor]) -> dict[str, float]:
    """The probes on the shapes world v2's own split (training colour names and shape words vs the held-out ones)."""
    from priorkit.distill.zoo.shapes_v2 import HELD_OUT_SHAPE_WORDS, TRAIN_COLOURS, TRAIN_SHAPE_WORDS

    encode = pooled(encoder)
    out = colour_probe_accuracy(encode, TRAIN_COLOURS, colours.held_out_colours())
    out["shape_words"] = shape_word_probe_accuracy(encode, TRAIN_SHAPE_WORDS, HELD_OUT_SHAPE_WORDS)
    return out
