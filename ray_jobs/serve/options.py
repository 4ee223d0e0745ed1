"""The serve app's settings: one dataclass of plain values, read from `python -m ray_jobs.serve`'s flags or
from the `args` of an application in a Serve config file (cluster/serve.yaml), checked in one place."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from dataclasses import dataclass

from data.untrusted import DEFAULT_MAX_IMAGE_PIXELS

TOKEN_ENV = "ONADE_SERVE_TOKEN"  # the bearer token, when --token is not given
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServeOptions:
    checkpoint: str
    host: str = "127.0.0.1"  # where the HTTP proxy listens; anything but loopback needs a token
    port: int = 8000
    token: str = ""  # bearer token every route but /healthz requires ("" = none; only on loopback)
    # Replicas: each holds the model and batches the requests routed to it.
    num_cpus: float = 1.0
    gpus_per_replica: float = 0.0
    accelerator_type: str = ""  # e.g. "A10G": Ray schedules replicas only on nodes of that GPU
    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 4.0  # the autoscaler's aim per replica
    max_ongoing_requests: int = 16  # routed to one replica at a time (the batcher sees at most these)
    max_queued_requests: int = 32  # waiting for a replica, per proxy; past it 503 + Retry-After
    retry_after_s: int = 2
    # Batching: up to max_batch requests (of one sampler setting) inpainted together.
    max_batch: int = 8
    batch_wait_s: float = 0.05
    deadline_s: float = 120.0  # a request's deadline from its arrival at the replica (504 past it)
    # Untrusted input (data/untrusted.py's limits).
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_request_bytes: int = 0  # 0 = what an image of max_pixels and its mask may take
    max_samples: int = 8
    max_steps: int = 4096  # the forward-pass budget one request may ask for
    threads: int = 0  # torch threads per replica on CPU (0 = num_cpus)

    def validate(self) -> ServeOptions:
        def bad(key: str, why: str):
            return ValueError(f"serve option {key!r}: {why} (got {getattr(self, key)!r})")

        if not self.checkpoint:
            raise bad("checkpoint", "give the exported checkpoint to serve (a folder or s3:// prefix)")
        if not 0 < self.port < 65536:
            raise bad("port", "must be a TCP port, 1-65535")
        if not self.token:
            self.token = os.environ.get(TOKEN_ENV, "")
        if not is_loopback(self.host) and not self.token:
            raise ValueError(f"refusing to listen on {self.host} without a token: anyone who can reach it could use "
                             f"the model. Give --token or set {TOKEN_ENV} (clients then send "
                             f"'Authorization: Bearer <token>'), or listen on 127.0.0.1")
        for key in ("num_cpus", "gpus_per_replica", "batch_wait_s", "retry_after_s"):
            if getattr(self, key) < 0:
                raise bad(key, "must be >= 0")
        for key in ("min_replicas", "max_replicas", "max_ongoing_requests", "max_queued_requests", "max_batch",
                    "max_samples", "max_steps", "max_pixels"):
            if getattr(self, key) < 1:
                raise bad(key, "must be >= 1")
        if self.min_replicas > self.max_replicas:
            raise bad("min_replicas", f"must be <= max_replicas ({self.max_replicas})")
        if self.deadline_s <= 0 or self.target_ongoing_requests <= 0:
            raise bad("deadline_s" if self.deadline_s <= 0 else "target_ongoing_requests", "must be > 0")
        if self.max_request_bytes < 0:
            raise bad("max_request_bytes", "must be >= 0 (0 = from max_pixels)")
        return self

    @classmethod
    def from_args(cls, args: dict) -> ServeOptions:
        """From a Serve config's application `args` (unknown keys are an error naming them)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(args) - names)
        if unknown:
            raise ValueError(f"unknown serve option(s) {unknown}; valid: {sorted(names)}")
        return cls(**args).validate()

    def request_bytes(self) -> int:
        """The most bytes one request body may hold: an image and its mask at the data/untrusted.py bound of
        4 bytes per allowed pixel each, plus room for the form fields."""
        from data.untrusted import max_image_bytes

        return self.max_request_bytes or 2 * max_image_bytes(self.max_pixels) + 64_000

    def deployment_options(self) -> dict:
        """Ray Serve options of the model deployment."""
        from ray.serve.config import BackpressureConfig

        actor = {"num_cpus": self.num_cpus, "num_gpus": self.gpus_per_replica}
        if self.accelerator_type:
            actor["accelerator_type"] = self.accelerator_type
        replicas = ({"num_replicas": self.min_replicas} if self.min_replicas == self.max_replicas else
                    {"autoscaling_config": {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                                            "target_ongoing_requests": self.target_ongoing_requests}})
        return {"ray_actor_options": actor, "max_ongoing_requests": self.max_ongoing_requests,
                "max_queued_requests": self.max_queued_requests,
                "backpressure_config": BackpressureConfig(status_code=503, retry_after_s=self.retry_after_s),
                **replicas}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
