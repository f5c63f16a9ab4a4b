"""The "Text to 3D" tab: SDS / VSD with live previews, the mesh viewer and downloads."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr
import numpy as np

from priorkit.apps.web_common import PROGRESS, HandlerBase, _choice, _number, readable_errors, stream_job
from priorkit.apps.web_images import _enlarge
from priorkit.apps.web_models import load_model, resolve_model

METHODS_3D = {"SDS": "sds", "VSD": "vsd"}


class Text3DHandlers(HandlerBase):
    """The tab's event handlers."""

    @readable_errors
    def generate_3d(self, prompt: str, method: str, particles: float, steps: float, seed: float, prior: str,
                    resolution: float, progress: gr.Progress = PROGRESS) -> Iterator[Any]:
        """Stream (preview, status, glb, files, gif) while SDS / VSD runs; the last yield holds the results."""
        from priorkit.gen3d.generate import GenerateConfig, generate, validate

        method_key = METHODS_3D[_choice(method, "method", METHODS_3D)]
        particles = _number(particles, "particles", 1, self.cfg.max_particles, integer=True)
        steps = _number(steps, "steps", 1, self.cfg.max_steps_3d, integer=True)
        seed = _number(seed, "seed", 0, 2**31 - 1, integer=True)
        resolution = _number(resolution, "resolution", 8, 128, integer=True)
        source = resolve_model(prior)
        validate(prompt, method_key, steps, resolution, particles, None, GenerateConfig.lr)
        cfg = GenerateConfig(export_resolution=self.cfg.export_resolution, turntable_frames=self.cfg.turntable_frames,
                             turntable_size=self.cfg.turntable_size)
        every = self.cfg.preview_every_3d or max(1, steps // 20)
        out = self.job_dir("3d")

        def work(emit: Callable[..., None], stop: threading.Event) -> Any:
            emit(status=f"loading the prior {source!r}")
            den = load_model(source)

            def callback(step: int, info: dict[str, Any]) -> None:
                emit(step=step, loss=info["loss"], preview=info["preview"])

            return generate(prompt.strip(), method_key, prior=den, steps=steps, seed=seed, out=out,
                            particles=particles, resolution=resolution, preview_every=every, progress=False,
                            config=cfg, callback=callback)

        t0 = time.time()
        result = None
        for kind, payload in stream_job(work):
            if kind == "tick":
                yield gr.skip()
            elif kind == "progress" and payload.get("step") is None:
                progress(0.0, desc=payload.get("status"))
                yield gr.skip(), payload.get("status"), gr.skip(), gr.skip(), gr.skip()
            elif kind == "progress":
                step = payload["step"]
                progress((step, steps), desc=f"{method} step", unit="steps")
                msg = f"step {step} / {steps}, loss {payload['loss']:.4g}, {time.time() - t0:.0f} s"
                if step == steps:
                    msg += " — exporting the mesh and turntable"
                preview = payload.get("preview")
                shown = gr.skip() if preview is None else _enlarge(preview, self.cfg.preview_min_height)
                yield shown, msg, gr.skip(), gr.skip(), gr.skip()
            else:
                result = payload
        files = [str(p) for k in ("glb", "obj", "mtl", "texture", "ply", "gif") for p in result.paths.get(k, [])]
        glb = str(result.paths["glb"][0]) if result.paths.get("glb") else None
        gif = str(result.paths["gif"][0]) if result.paths.get("gif") else None
        previews = result.paths.get("previews") or []
        preview = gr.skip()
        if previews:
            from PIL import Image

            with Image.open(previews[-1]) as im:
                preview = _enlarge(np.asarray(im.convert("RGB")), self.cfg.preview_min_height)
        empty = sum(m is None for m in result.meshes)
        msg = (f"done: {steps} {method} steps, {particles} particle(s), {result.seconds:.0f} s. "
               f"Final loss {result.history[-1]['loss']:.4g}.")
        if empty:
            msg += f" {empty} particle(s) ended empty (no surface to mesh): try another seed or more steps."
        yield preview, msg, glb, files, gif
