r"""Inpaint one image from a browser or an HTTP call: a Ray Serve application (ray_jobs.serve.app).

Locally (starts its own local Ray when RAY_ADDRESS is unset; prints the page's URL and serves until Ctrl-C):

    python -m ray_jobs.serve --checkpoint runs/debug1/export

Then open http://127.0.0.1:8000/ (the page), http://127.0.0.1:8000/docs (the API), or:

    curl -sf -F image=@photo.jpg -F hole=box:0.25,0.25,0.5,0.5 -F caption="a red flower" -F output=image \
        http://127.0.0.1:8000/v1/inpaint -o filled.png

On a cluster, with Serve's own CLI and the config in cluster/serve.yaml (replicas, autoscaling, batching and
limits are its application's `args`, ray_jobs.serve.options.ServeOptions), or a KubeRay RayService
(cluster/kuberay/rayservice.yaml):

    serve deploy cluster/serve.yaml          # to the cluster at RAY_ADDRESS / the dashboard
    serve run cluster/serve.yaml             # in the foreground

Listening beyond loopback (--host 0.0.0.0) needs a bearer token (--token, or ONADE_SERVE_TOKEN), which every
route but /healthz then requires. Uploads are untrusted: their bytes and pixels are bounded before they are
decoded (data/untrusted.py), and nothing in a request names a file on the server.
"""

from ray_jobs.serve.cli import check_args  # noqa: E402 - what tests/test_docs.py checks documented commands with

__all__ = ["check_args"]
