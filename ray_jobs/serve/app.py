"""The Ray Serve application: one deployment (`Inpainter`), a FastAPI ingress whose replicas each hold the
model and batch the requests routed to them. How to run it: ray_jobs/serve/__init__.py.

Batching. `POST /v1/inpaint` checks its request (ray_jobs.serve.requests) and hands it to `run_batch`, a
`@serve.batch` method: up to `max_batch` requests that arrive within `batch_wait_s` are inpainted together,
in groups of requests that sample alike (Job.group), each group one `onade.inpaint` run (in pieces that fit
memory, onade.memory). Every sample has its own seed (ray_jobs.inpaint_inputs.image_seeds, from the seed
field and the upload's file name), so a request's samples do not depend on what it was batched with.

Load and faults. Past `max_queued_requests` waiting at the proxy Serve answers 503 with Retry-After; a
request that is not done `deadline_s` after it reached its replica gets 504, and its work is dropped (a
group whose requests are all gone stops at its next recorded pass); a client that disconnects cancels its
request the same way (Serve cancels its task).
"""

# No `from __future__ import annotations` here: FastAPI reads the routes' annotations (Request) at run time,
# in the replica, where string annotations of the pickled class no longer resolve.
import asyncio
import base64
import concurrent.futures
import dataclasses
import hmac
import json
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from ray import serve

from ray_jobs.serve.options import ServeOptions
from ray_jobs.serve.requests import MEDIA_TYPES, Job, RequestError, batch_rows, parse

STATIC = Path(__file__).parent / "static"
PAGE_FILES = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript"),
              "/app.css": ("app.css", "text/css")}
TOKEN_COOKIE = "onade_token"
BUDGETS = (1, 4, 8, 16, 32, 64, 128, 256)  # /v1/model's forecast table
UPDATES = 8  # streamed states of the hole per request (plus the start)
PREVIEW_SIDE = 256  # a streamed state's side in pixels (the model's window, scaled up by whole pixels)

api = FastAPI(title="onade inpainting", version="1",
              description="Inpaint an image with a trained onade checkpoint. The page at / uses this API.")


@dataclass
class Ticket:
    """A request in the batcher: its job, when it must be done, and where its streamed states go."""
    job: Job
    deadline: float  # time.monotonic()
    stream: asyncio.Queue | None = None
    loop: asyncio.AbstractEventLoop | None = None
    gone: bool = False  # cancelled, disconnected or past its deadline: its group may stop without it
    seen: int = 0  # frames recorded of it so far
    stride: int = 1  # frames per streamed update

    def abandoned(self) -> bool:
        return self.gone or time.monotonic() > self.deadline

    def frame(self, frame_KSSC: np.ndarray) -> None:
        """From the sampler's thread: queue every stride-th state for the request's stream, with the forward
        passes made by then."""
        self.seen += 1
        if self.stream is not None and (self.seen - 1) % self.stride == 0:
            passes = (self.seen - 1) * (3 if self.job.sample.by_pixel else 1)
            self.loop.call_soon_threadsafe(self.stream.put_nowait, (frame_KSSC, passes))


@dataclass
class Outcome:
    samples_KSSC: np.ndarray | None = None
    model_seconds: float = 0.0
    batch_requests: int = 0
    forward_passes: int = 0
    error: RequestError | None = None


class _Abandoned(Exception):
    """Every request of a group is gone: stop its run."""


# Defined before the deployment: Serve pickles the class as it is decorated, with the module globals of
# that moment.
def _frames(job: Job) -> int:
    """Frames the sampler records for this request's run (one per planned pass, plus the start)."""
    o = job.sample
    return max(1, o.steps // 3 if o.by_pixel else o.steps) + 1


def _previews(frame_KSSC: np.ndarray) -> list[str]:
    """The model window's state of each sample as a PNG data URL, scaled up by whole pixels."""
    from ray_jobs.outputs import encode_image

    scale = max(1, PREVIEW_SIDE // frame_KSSC.shape[1])
    return ["data:image/png;base64," + base64.b64encode(encode_image(img.repeat(scale, 0).repeat(scale, 1),
                                                                      "png")).decode()
            for img in frame_KSSC]


def _in_json(body: dict) -> dict:
    """A finished request's body with its samples' bytes base64-encoded, for JSON."""
    return {**body, "samples": [{**s, "data": base64.b64encode(s["data"]).decode()} for s in body["samples"]]}


def _line(obj: dict) -> bytes:
    return (json.dumps(obj) + "\n").encode()


def _error(e: RequestError) -> JSONResponse:
    return JSONResponse(e.to_json(), status_code=e.status)


@serve.deployment
@serve.ingress(api)
class Inpainter:
    def __init__(self, options: dict):
        from onade.config import SampleConfig
        from ray_jobs.malloc import keep_freed_memory

        self.o = ServeOptions(**options).validate()
        keep_freed_memory()  # a fresh process runs the model 1.5x slower without (ray_jobs/malloc.py)
        # All torch work on one thread, the model's, loading included: a CPU model ran 30% slower on a thread
        # of a process whose other thread had run torch before (two OpenMP teams on 2 cores; bench/serve.py).
        self.model_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="onade-model")
        self.model_thread.submit(self.load).result()
        self.defaults = SampleConfig()  # the batch job's defaults
        self.max_rows = None
        self.run_batch.set_max_batch_size(self.o.max_batch)
        self.run_batch.set_batch_wait_timeout_s(self.o.batch_wait_s)
        self.budget_rows = None

    def load(self) -> None:
        import torch

        import onade
        from ray_jobs.devices import actor_device
        from ray_jobs.train_checkpoints import load_export

        self.device = actor_device()
        if self.device.type == "cpu":
            torch.set_num_threads(self.o.threads or max(1, int(self.o.num_cpus)))
        loaded = load_export(self.o.checkpoint, device=self.device)
        self.model, self.tokenizer, self.config, self.profile = (loaded.model, loaded.tokenizer, loaded.config,
                                                                 loaded.profile)
        self.train_step = loaded.train_step
        self.precision = onade.precision.resolve_precision("auto", self.device)
        self.parameters = sum(p.numel() for p in self.model.parameters())

    # ---- routes ----------------------------------------------------------------------------------

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/v1/model")
    async def model_info(self, request: Request):
        if (denied := self.denied(request)) is not None:
            return denied
        m = self.config.model
        info = {"checkpoint": self.o.checkpoint, "parameters": self.parameters, "image_size": m.image_size,
                "model": {k: getattr(m, k) for k in ("width", "num_blocks", "merge_every", "head", "text_dim")},
                "train_step": self.train_step,
                "train_steps_planned": self.config.train.steps, "caption_dropout": self.config.train.caption_dropout,
                "device": str(self.device), "precision": self.precision,
                "defaults": {k: getattr(self.defaults, k) for k in ("strategy", "steps", "temperature", "top_p",
                                                                     "channels", "guidance")},
                "limits": {"max_pixels": self.o.max_pixels, "max_request_bytes": self.o.request_bytes(),
                           "max_samples": self.o.max_samples, "max_steps": self.o.max_steps,
                           "deadline_s": self.o.deadline_s},
                "budgets": await asyncio.to_thread(self.budgets)}
        return info

    def budgets(self) -> list[dict] | None:
        """The loss profile's forecast for the default hole: bits per hole subpixel at each pass budget, the
        DP plan's and equal chunks' (onade.plans.budget_table), computed once; None without a profile."""
        from onade.plans import budget_table

        if self.profile is not None and self.budget_rows is None:
            self.budget_rows = budget_table(self.profile, BUDGETS)
        return self.budget_rows

    @api.post("/v1/inpaint")
    async def inpaint(self, request: Request):
        """Multipart form: image (file), mask (file) or hole (center, box:X,Y,W,H, box in fractions), caption,
        strategy, steps, guidance, temperature, top_p, channels, seed, samples, format (png|jpg|webp), output
        (json: every sample base64 in JSON; image: the one sample's bytes, its metadata in X-Onade-Metadata)."""
        if (denied := self.denied(request)) is not None:
            return denied
        start = time.monotonic()
        try:
            job = await self.read(request)
            ticket = Ticket(job, start + self.o.deadline_s)
            outcome = await self.submit(ticket)
            body = await asyncio.to_thread(self.finish, job, outcome, start)
        except RequestError as e:
            return _error(e)
        if job.output == "image":
            meta = {k: v for k, v in body.items() if k != "samples"}
            return Response(body["samples"][0]["data"], media_type=MEDIA_TYPES[job.format],
                            headers={"X-Onade-Metadata": json.dumps(meta, ensure_ascii=True)})
        return JSONResponse(_in_json(body))

    @api.post("/v1/inpaint/stream")
    async def inpaint_stream(self, request: Request):
        """As /v1/inpaint, answered as JSON lines: {"event": "start"}, then {"event": "update"} with the model
        window's state (PNG data URLs) every few passes, then {"event": "result"} as /v1/inpaint's JSON (or
        {"event": "error"})."""
        if (denied := self.denied(request)) is not None:
            return denied
        start = time.monotonic()
        try:
            job = await self.read(request)
        except RequestError as e:
            return _error(e)
        ticket = Ticket(job, start + self.o.deadline_s, stream=asyncio.Queue(), loop=asyncio.get_running_loop())
        ticket.stride = max(1, -(-_frames(job) // UPDATES))

        async def lines():
            yield _line({"event": "start", "passes": job.passes(), **job.record()})
            task = asyncio.ensure_future(self.submit(ticket))
            try:
                while True:
                    waiter = asyncio.ensure_future(ticket.stream.get())
                    done, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
                    if waiter in done:
                        frame_KSSC, passes = waiter.result()
                        images = await asyncio.to_thread(_previews, frame_KSSC)
                        yield _line({"event": "update", "pass": passes, "of": job.passes(), "samples": images})
                        continue
                    waiter.cancel()
                    try:
                        outcome = task.result()
                        body = await asyncio.to_thread(self.finish, job, outcome, start)
                        yield _line({"event": "result", **_in_json(body)})
                    except RequestError as e:
                        yield _line({"event": "error", **e.to_json()})
                    return
            finally:
                if not task.done():  # the client went away mid-stream
                    ticket.gone = True
                    task.cancel()

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @api.get("/")
    async def page(self, request: Request):
        return self.static(request, "/")

    @api.get("/app.js")
    async def page_js(self, request: Request):
        return self.static(request, "/app.js")

    @api.get("/app.css")
    async def page_css(self, request: Request):
        return self.static(request, "/app.css")

    # ---- the request's life ------------------------------------------------------------------------

    def denied(self, request: Request, query: bool = False) -> Response | None:
        """401 unless the request bears the token (when the server has one): as `Authorization: Bearer`, or as
        the cookie the page sets when opened as /?token=... (`query`: that URL is accepted here)."""
        if not self.o.token:
            return None
        expected = self.o.token.encode()
        header = request.headers.get("authorization", "")
        given = [header[len("Bearer "):] if header.startswith("Bearer ") else "",
                 request.cookies.get(TOKEN_COOKIE, ""), request.query_params.get("token", "") if query else ""]
        if any(hmac.compare_digest(g.encode(), expected) for g in given if g):
            return None
        return _error(RequestError("authorization", "this server needs 'Authorization: Bearer <token>' (a browser: "
                                                    "open the page as /?token=<token>)", 401))

    def static(self, request: Request, route: str) -> Response:
        if (denied := self.denied(request, query=True)) is not None:
            return denied
        name, media = PAGE_FILES[route]
        text = (STATIC / name).read_text()
        response = HTMLResponse(text) if media.startswith("text/html") else Response(text, media_type=media)
        if self.o.token and request.query_params.get("token"):
            # Same-site only: another site's page cannot make the browser send it.
            response.set_cookie(TOKEN_COOKIE, self.o.token, httponly=True, samesite="strict")
        return response

    async def read(self, request: Request) -> Job:
        """The request's body, read up to the byte limit (before anything is parsed), then checked."""
        limit = self.o.request_bytes()
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise RequestError("body", f"the request is {int(declared):,} bytes; at most {limit:,}", 413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError("body", f"the request is over {limit:,} bytes", 413)
            chunks.append(chunk)
        request._body = b"".join(chunks)  # Starlette's cache of the body: form() parses it from here
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise RequestError("body", "send the request as multipart/form-data (curl -F image=@photo.jpg ...)", 415)
        try:
            form = await request.form(max_files=2, max_fields=len(Job.__dataclass_fields__) + 8)
        except Exception as e:  # noqa: BLE001 - Starlette raises several types for a malformed body
            raise RequestError("body", f"malformed multipart body: {e}") from None
        text, files = {}, {}
        for key, value in form.multi_items():
            if hasattr(value, "read"):
                files[key] = (value.filename or "", await value.read())
            else:
                text[key] = str(value)
        unknown_files = sorted(set(files) - {"image", "mask"})
        if unknown_files:
            raise RequestError(unknown_files[0], f"unexpected file field {unknown_files[0]!r}: send 'image' and "
                                                 "optionally 'mask'")
        for key in ("image", "mask"):
            if key in text:
                raise RequestError(key, f"{key} must be a file upload (curl -F {key}=@file.png)")
        mask = files["mask"][1] if "mask" in files else None
        return await asyncio.to_thread(
            parse, text, files.get("image"), mask, image_size=self.config.model.image_size,
            max_pixels=self.o.max_pixels, max_samples=self.o.max_samples, max_steps=self.o.max_steps,
            defaults=self.defaults)

    async def submit(self, ticket: Ticket) -> Outcome:
        """Through the batcher, within the deadline; a request cancelled here is dropped from its batch."""
        try:
            outcome = await asyncio.wait_for(self.run_batch(ticket), max(0.0, ticket.deadline - time.monotonic()))
        except asyncio.TimeoutError:
            ticket.gone = True
            raise RequestError("deadline", f"not done within the server's deadline of {self.o.deadline_s:g} s; "
                                           "ask for fewer steps or samples, or try again later", 504) from None
        except asyncio.CancelledError:
            ticket.gone = True
            raise
        if outcome.error is not None:
            raise outcome.error
        return outcome

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05, max_concurrent_batches=2)
    async def run_batch(self, tickets: list[Ticket]) -> list[Outcome]:
        groups = defaultdict(list)
        for i, t in enumerate(tickets):
            groups[t.job.group].append(i)
        outcomes = [Outcome() for _ in tickets]
        for members in groups.values():
            live = [i for i in members if not tickets[i].abandoned()]
            if not live:
                continue
            try:
                done = await asyncio.get_running_loop().run_in_executor(self.model_thread, self.run_group,
                                                                        [tickets[i] for i in live])
            except _Abandoned:
                continue
            except Exception as e:  # noqa: BLE001 - one group's failure is its requests' 500, not the replica's
                err = RequestError("server", f"inpainting failed: {type(e).__name__}: {e}", 500)
                done = [Outcome(error=err)] * len(live)
            for i, outcome in zip(live, done):
                outcomes[i] = outcome
        return outcomes

    def run_group(self, tickets: list[Ticket]) -> list[Outcome]:
        """One onade.inpaint run over requests that sample alike (the sampler's thread)."""
        import torch

        from onade.memory import forward_batch_limit, inpaint_in_pieces

        jobs = [t.job for t in tickets]
        sample = jobs[0].sample
        x, observed, tokens, lengths, seeds = batch_rows(jobs, self.tokenizer, self.config.data.max_tokens)
        owner = np.repeat(np.arange(len(jobs)), [j.samples for j in jobs])  # row -> its ticket
        first = np.concatenate([[0], np.cumsum([j.samples for j in jobs])[:-1]])
        if self.max_rows is None:
            self.max_rows = forward_batch_limit(self.config.model, self.device, self.config.data.max_tokens)

        def on_frame(start: int, frame_BHWC: torch.Tensor) -> None:
            """After every planned pass: stop when nobody waits; stream to the requests that asked."""
            if all(t.abandoned() for t in tickets):
                raise _Abandoned()
            streams = [i for i in sorted(set(owner[start:start + len(frame_BHWC)])) if tickets[i].stream is not None]
            if streams:
                frame = frame_BHWC.cpu().numpy()
                for i in streams:
                    lo = first[i] - start
                    tickets[i].frame(frame[max(0, lo):lo + jobs[i].samples])

        tic = time.perf_counter()
        run = inpaint_in_pieces(self.model, x.to(self.device), observed.to(self.device), tokens, lengths,
                                dataclasses.replace(sample, precision=self.precision), seeds=seeds,
                                max_rows=self.max_rows, record_every=1, profile=self.profile, on_frame=on_frame)
        seconds = time.perf_counter() - tic
        if run.splits:
            self.max_rows = run.rows_per_pass
        out = run.images_BHWC.cpu().numpy()
        return [Outcome(samples_KSSC=out[first[i]:first[i] + j.samples], model_seconds=seconds,
                        batch_requests=len(jobs), forward_passes=j.passes()) for i, j in enumerate(jobs)]

    def finish(self, job: Job, outcome: Outcome, start: float) -> dict:
        """The samples pasted back at the input's size and encoded (bytes: `_in_json` makes them JSON), with the
        request's metadata."""
        from ray_jobs.inpaint import guidance_warning
        from ray_jobs.outputs import encode_image, sampler_fields

        warning = guidance_warning(job.sample.guidance, self.config.train.caption_dropout, option="guidance")
        samples = []
        for k, (seed, sample_SSC) in enumerate(zip(job.seeds, outcome.samples_KSSC)):
            full = job.window.paste(job.source_HWC, job.hidden_HW, sample_SSC, job.feather)
            samples.append({"index": k, "seed": seed, "format": job.format,
                            "data": encode_image(full, job.format)})
        return {**job.record(), **sampler_fields(job.sample, outcome.forward_passes), "precision": self.precision,
                "model_seconds": round(outcome.model_seconds, 4), "batch_requests": outcome.batch_requests,
                "seconds": round(time.monotonic() - start, 4), "command": job.command(self.o.checkpoint),
                "warnings": [warning] if warning else [], "samples": samples}


def build(args: dict):
    """The application for `serve run` / `serve deploy` (cluster/serve.yaml's import_path): `args` are
    ServeOptions fields."""
    o = ServeOptions.from_args(dict(args))
    return Inpainter.options(**o.deployment_options()).bind(asdict(o))


__all__ = ["build", "Inpainter", "api"]
