"""The command line of `python -m ray_jobs.serve` (see ray_jobs/serve/__init__.py): flags -> ServeOptions, and
the app started on the connected (or a new local) Ray."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import time

from ray_jobs.serve.options import TOKEN_ENV, ServeOptions

APP_NAME = "onade"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    import ray_jobs.serve as package

    p = argparse.ArgumentParser(prog="python -m ray_jobs.serve", description=package.__doc__.split("\n\n")[0])
    d = ServeOptions(checkpoint="")
    p.add_argument("--checkpoint", required=True, help="exported checkpoint: a folder or s3://bucket/prefix")
    p.add_argument("--host", default=d.host, help="where to listen (default loopback; others need a token)")
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--token", default="", help=f"bearer token required on every route but /healthz "
                                               f"(default: ${TOKEN_ENV})")
    g = p.add_argument_group("replicas")
    g.add_argument("--num-cpus", type=float, default=d.num_cpus, help="CPUs per replica")
    g.add_argument("--gpus-per-replica", type=float, default=d.gpus_per_replica)
    g.add_argument("--accelerator-type", default="", help="only on nodes with this GPU type (e.g. A10G)")
    g.add_argument("--min-replicas", type=int, default=d.min_replicas)
    g.add_argument("--max-replicas", type=int, default=d.max_replicas, help="> --min-replicas: autoscale")
    g.add_argument("--target-ongoing-requests", type=float, default=d.target_ongoing_requests)
    g.add_argument("--max-ongoing-requests", type=int, default=d.max_ongoing_requests)
    g.add_argument("--max-queued-requests", type=int, default=d.max_queued_requests,
                   help="waiting requests past which the app answers 503 with Retry-After")
    g.add_argument("--max-batch", type=int, default=d.max_batch, help="requests inpainted together")
    g.add_argument("--batch-wait-s", type=float, default=d.batch_wait_s)
    g.add_argument("--deadline-s", type=float, default=d.deadline_s, help="504 past it; the work is dropped")
    g.add_argument("--threads", type=int, default=0, help="torch threads per CPU replica (0 = --num-cpus)")
    lim = p.add_argument_group("limits")
    lim.add_argument("--max-image-pixels", dest="max_pixels", type=int, default=d.max_pixels)
    lim.add_argument("--max-samples", type=int, default=d.max_samples)
    lim.add_argument("--max-steps", type=int, default=d.max_steps)
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> ServeOptions:
    """The options of parsed flags, checked (a public --host without a token is refused here)."""
    return ServeOptions(**vars(args)).validate()


def start(o: ServeOptions) -> str:
    """Deploy the app on the connected Ray (Serve's proxy on o.host:o.port); returns its URL."""
    from ray import serve

    from ray_jobs.serve.app import build

    serve.start(http_options={"host": o.host, "port": o.port,
                              # Serve's own backstop behind the app's deadline (which answers 504 first)
                              "request_timeout_s": o.deadline_s + 30})
    serve.run(build(dataclasses.asdict(o)), name=APP_NAME, route_prefix="/", blocking=False)
    host = "127.0.0.1" if o.host in ("0.0.0.0", "::") else o.host
    return f"http://{host}:{o.port}/"


def main(argv: list[str] | None = None) -> None:
    o = check_args(parse_args(argv))
    # Ctrl-C, or `kill -INT` (a script's background job starts with SIGINT ignored), from the start: the app
    # answers before this function is done. Ray's own SIGTERM handler ends the process without cleaning up.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from ray_jobs.ray_env import init_ray, print_versions

    print_versions()
    init_ray()
    try:
        url = start(o)
        page = url + (f"?token={o.token}" if o.token else "")  # the page keeps it as a same-site cookie
        print(f"serving {o.checkpoint} at {page} (API: {url}docs); Ctrl-C stops", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve

        serve.shutdown()
        print("stopped", flush=True)
