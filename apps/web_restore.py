"""The "Restore" tab: inpainting, deblurring and super-resolution of an uploaded or example image."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr
import torch

from priorkit.apps.web_common import (
    PROGRESS,
    HandlerBase,
    Interruptible,
    UserInputError,
    _choice,
    _number,
    readable_errors,
    stream_job,
)
from priorkit.apps.web_images import (
    NO_EXAMPLE,
    SHAPES_EXAMPLE,
    _to_uint8,
    editor_image,
    example_image,
    example_names,
    fit_side,
)
from priorkit.apps.web_models import load_model
from priorkit.inverse.registry import labels as restore_labels

TASKS = {"inpaint (painted mask)": "inpaint_mask", "inpaint (centre box)": "inpaint_box",
         "deblur": "deblur_gaussian", "super-resolution x2": "sr2", "super-resolution x4": "sr4",
         "super-resolution x8": "sr8"}
RESTORE_METHODS = restore_labels()  # display labels of the registered prior methods (priorkit.inverse.registry)
MODE_EXAMPLE = "example: degrade this clean image, then restore it (PSNR)"
MODE_OBSERVED = "restore this degraded image"
PRIORS_RESTORE = ("auto", "photos", "shapes")


class RestoreHandlers(HandlerBase):
    """The tab's event handlers."""

    @readable_errors
    def load_example(self, name: str) -> Any:
        """The clean image of an example (uint8 (H, W, 3)) for the editor; "(your image)" leaves the editor as is."""
        if name in (None, "", NO_EXAMPLE):
            return gr.skip()
        return _to_uint8(example_image(_choice(name, "example", example_names())))

    @readable_errors
    def restore(self, editor: Any, example: str, task: str, method: str, sigma_y: float, mode: str, prior: str,
                nfe: float, seed: float, side: float, progress: gr.Progress = PROGRESS) -> Iterator[Any]:
        """Stream (before/after pair, status, download) while a restoration runs."""
        from priorkit.distill.core.loading import ModelLoadError, bundled_path
        from priorkit.inverse.registry import method_for_prior
        from priorkit.inverse.restore import restore, save_image

        task_key = TASKS[_choice(task, "task", TASKS)]
        _choice(method, "method", RESTORE_METHODS)
        _choice(mode, "mode", (MODE_EXAMPLE, MODE_OBSERVED))
        _choice(prior, "prior", PRIORS_RESTORE)
        sigma_y = _number(sigma_y, "noise level sigma_y", 0.0, 0.2)
        nfe = _number(nfe, "steps", 1, self.cfg.max_restore_nfe, integer=True)
        seed = _number(seed, "seed", 0, 2**31 - 1, integer=True)
        side = _number(side, "working size", 8, self.cfg.max_restore_side, integer=True)
        image, painted = editor_image(editor, self.cfg.max_side)
        observed = mode == MODE_OBSERVED
        factor = int(task_key[2:]) if task_key.startswith("sr") else 1
        image, painted = fit_side(image, painted, max(1, side // factor) if observed else side)
        if factor > 1 and not observed and min(image.shape[-2:]) < factor:
            raise UserInputError(f"the image is too small for x{factor} super-resolution")
        mask = None
        if task_key == "inpaint_mask":
            if painted is None or not bool((painted > 0.5).any()):
                raise UserInputError("paint over the region to fill (brush tool) before inpainting, or choose "
                                     "'inpaint (centre box)'")
            mask = (painted <= 0.5).float()  # 1 = keep
        source = ("shapes" if example == SHAPES_EXAMPLE else "photos") if prior == "auto" else prior
        if source == "photos":
            try:
                bundled_path("photos")
            except ModelLoadError:
                raise UserInputError("the 'photos' prior is not available yet (its weights are still being "
                                     "trained). Pick the shapes example, or choose the 'shapes' prior.") from None
        out = self.job_dir("restore")

        def work(emit: Callable[..., None], stop: threading.Event) -> Any:
            emit(status=f"loading the prior {source!r}")
            den = load_model(source)
            calls = [0]

            def tick(batch: int) -> None:
                calls[0] += 1
                emit(calls=calls[0])

            # the form of the method that suits the prior's kind (PiGDM: the flow form for flow-matching priors)
            name = method_for_prior(method, den).name
            with torch.enable_grad():
                res = restore(image, task_key, name, prior=Interruptible(den, tick), sigma_y=sigma_y, nfe=nfe,
                              seed=seed, mask=mask, observed=observed, progress=False)
            return res, name

        result = None
        for kind, payload in stream_job(work):
            if kind == "tick":
                yield gr.skip()
            elif kind == "progress" and "calls" in payload:
                progress((payload["calls"], None), desc="model evaluations", unit="calls")
                yield gr.skip(), f"{payload['calls']} model evaluations", gr.skip()
            elif kind == "progress":
                yield gr.skip(), payload.get("status"), gr.skip()
            else:
                result, used = payload
        path = out / "restored.png"
        if not bool(torch.isfinite(result.restored).all()):  # never a black download
            raise UserInputError("the restoration holds NaN or inf values (a damaged or diverged prior?): nothing "
                                 "saved; try another prior or method")
        save_image(result.restored, path)
        before, after = _to_uint8(result.degraded), _to_uint8(result.restored)
        h, w = after.shape[:2]
        msg = (f"{method} ({used}) with the '{source}' prior: {result.nfe} model passes, {result.seconds:.1f} s, "
               f"{w}x{h}.")
        if not observed:
            from torchmetrics.functional.image import peak_signal_noise_ratio

            clean = image[..., : result.restored.shape[-2], : result.restored.shape[-1]]
            p_out = float(peak_signal_noise_ratio(result.restored[None], clean[None], data_range=1.0))
            p_in = float(peak_signal_noise_ratio(result.degraded[None], clean[None], data_range=1.0))
            msg += f" PSNR: restored {p_out:.2f} dB (degraded input as shown: {p_in:.2f} dB)."
        yield (before, after), msg, str(path)
