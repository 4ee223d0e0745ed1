"""The model stage of the inpainting job (see ray_jobs.inpaint for how to run it).

`InpaintActor` (a Ray Data actor pool, one model replica per actor) loads the checkpoint once, then
inpaints whole batches of decoded model-size windows (ray_jobs.inpaint_inputs.decode_batch) with
`onade.inpaint`: every sampler setting from the job's one SampleConfig, every sample drawn from its own
seed (inpaint_inputs.image_seeds), so an image's samples do not depend on its batch. It writes nothing:
the samples go on to the write stage (ray_jobs.outputs.write_batch), so the actor's time is the model's.

A batch's samples run in pieces of at most --max-forward-batch rows per forward pass (default: what half
the device's free memory holds, onade.memory), and a piece that runs out of memory is halved and run
again (onade.memory.inpaint_in_pieces): the samples are the same, and the smaller size is kept for the
batches after. Only a single example that does not fit becomes error rows; the job goes on.
"""

from __future__ import annotations

import time

import numpy as np

from onade.config import NUM_CHANNELS
from onade.memory import forward_batch_limit, inpaint_in_pieces, rows_per_example
from ray_jobs.inpaint_inputs import JobOptions, image_seeds
from ray_jobs.outputs import gif_bytes

# The model-size window and hole go on too: with --fit crop they are all the write stage needs.
PASS_THROUGH = ("input", "rel", "caption", "mask_url", "fit", "digest", "image", "hidden")


class InpaintActor:
    """One model replica: loads the checkpoint once, then inpaints batches of decoded rows."""

    def __init__(self, opts: dict):
        import torch

        import onade

        from ray_jobs.devices import actor_device
        from ray_jobs.train_checkpoints import load_export

        self.opts = JobOptions(**opts)
        self.device = actor_device()  # CUDA exactly when Ray granted this actor a GPU
        if self.opts.threads > 0 and self.device.type == "cpu":
            torch.set_num_threads(self.opts.threads)
        loaded = load_export(self.opts.checkpoint, device=self.device)
        self.model, self.tokenizer, self.config = loaded.model, loaded.tokenizer, loaded.config
        self.profile = loaded.profile  # plans the passes of a budgeted ancestral run (None: equal chunks)
        self.sample = self.opts.sample_config()
        self.precision = onade.precision.resolve_precision(self.sample.precision, self.device)
        self.max_rows = self.opts.max_forward_batch or forward_batch_limit(self.config.model, self.device,
                                                                            self.config.data.max_tokens)
        if self.config.model.image_size != self.opts.image_size:
            raise ValueError(f"checkpoint {self.opts.checkpoint} is for {self.config.model.image_size}px images, "
                             f"the job was planned for {self.opts.image_size}px")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        o, n, S = self.opts, len(batch["input"]), self.opts.image_size
        errors = [str(e) for e in batch["error"]]
        good = [i for i in range(n) if not errors[i]]
        samples = np.zeros((n, o.samples, S, S, NUM_CHANNELS), np.uint8)
        gifs = [b""] * n
        model_seconds = 0.0
        if good:
            t0 = time.perf_counter()
            try:
                out, chain = self.inpaint(batch, good)
                model_seconds = time.perf_counter() - t0
                samples[good] = out
                if chain is not None:
                    for j, i in enumerate(good):
                        gifs[i] = gif_bytes(_own_frames(chain[j]))
            except ValueError as e:  # OutOfMemoryAtOneExample among them
                for i in good:
                    errors[i] = f"inpainting failed: {e}"
        seconds = time.perf_counter() - start
        result = {k: batch[k] for k in PASS_THROUGH}
        result.update(
            error=np.array(errors, dtype=object), samples=samples,
            forward_passes=np.array([0 if errors[i] else self.passes(batch["hidden"][i]) for i in range(n)]),
            # The batch's time shared out over its images (a batch runs as one).
            model_seconds=np.full(n, model_seconds / max(1, n)), actor_seconds=np.full(n, seconds / max(1, n)),
            precision=np.array([self.precision] * n, dtype=object))
        if o.animate:
            result["gif"] = np.array(gifs, dtype=object)
        return result

    def passes(self, hidden_SS: np.ndarray) -> int:
        """The forward passes that inpainted this input's hole (its own run, not its batch's longest)."""
        from onade.sampling import planned_passes

        return planned_passes(self.sample, NUM_CHANNELS * int(hidden_SS.sum()))

    def inpaint(self, batch, good: list[int]):
        """-> (samples [G,K,S,S,3], frames [G,F,K,S,S,3] or None) of the rows `good`."""
        import torch

        from onade.sampling import planned_passes

        o, K = self.opts, self.opts.samples
        x = torch.from_numpy(np.stack([batch["image"][i] for i in good])).repeat_interleave(K, 0)
        hidden_BHW = torch.from_numpy(np.stack([batch["hidden"][i] for i in good]))
        observed_BHWC = ~hidden_BHW[..., None].expand(-1, -1, -1, NUM_CHANNELS).repeat_interleave(K, 0)
        tokens, lengths = self.tokenizer.encode_batch([str(batch["caption"][i]) for i in good],
                                                      self.config.data.max_tokens)
        tokens, lengths = tokens.repeat_interleave(K, 0), lengths.repeat_interleave(K, 0)
        seeds = [s for i in good for s in image_seeds(o.seed, str(batch["rel"][i]), K)]
        # Frames every so many passes of the largest possible hole: the same for every batch.
        largest = NUM_CHANNELS * o.image_size ** 2
        record_every = max(1, planned_passes(self.sample, largest) // o.frames) if o.animate else 0
        run = inpaint_in_pieces(self.model, x.to(self.device), observed_BHWC.to(self.device), tokens, lengths,
                                self.sample, seeds=seeds, max_rows=self.max_rows, record_every=record_every,
                                profile=self.profile)
        if run.splits:
            print(f"out of memory at {self.max_rows or len(seeds) * rows_per_example(self.sample)} rows per forward "
                  f"pass: went on with {run.rows_per_pass} (--max-forward-batch sets it)", flush=True)
            self.max_rows = run.rows_per_pass
        out, chain = run.images_BHWC, run.chain_FBHWC
        G = len(good)
        out = out.cpu().numpy().reshape(G, K, *out.shape[1:])
        frames = None
        if o.animate:
            frames = chain.numpy().reshape(chain.shape[0], G, K, *chain.shape[2:]).transpose(1, 0, 2, 3, 4, 5)
        return out, frames


def _own_frames(frames_FKHWC: np.ndarray) -> np.ndarray:
    """One input's frames without the copies of its final state that the rest of its batch adds (a batch
    runs as long as its longest run): its animation must not depend on its batch."""
    last = len(frames_FKHWC) - 1
    while last > 0 and np.array_equal(frames_FKHWC[last - 1], frames_FKHWC[-1]):
        last -= 1
    return frames_FKHWC[:last + 1]


__all__ = ["InpaintActor", "PASS_THROUGH"]
