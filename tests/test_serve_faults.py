"""The Serve app under faults, over real HTTP on a local Ray: the token, a full queue (503 + Retry-After), a
deadline (504, and its work dropped), a client that goes away, and a replica killed mid-request."""

import os
import subprocess
import sys
import threading
import time

import pytest
import requests

from tests.test_serve import photo, png, post

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
TOKEN = "t0ken-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Gibbs sweeps of the 16 px debug model: LONG runs for minutes unless dropped, QUICK in well under a second.
LONG = dict(strategy="independent-gibbs", steps=200_000)
QUICK = dict(steps=6)


@pytest.fixture(scope="module")
def app(ray_local, serve_export):
    from ray import serve

    from tests.fixtures.serve import start_app

    served = start_app(serve_export, token=TOKEN, max_batch=1, max_ongoing_requests=1, max_queued_requests=2,
                       retry_after_s=3, deadline_s=6, max_steps=1_000_000)
    yield served
    serve.shutdown()


def call(url: str, fields: dict, seed: int = 0, **kw) -> requests.Response:
    return post(url, png(photo(32, 32, seed)), headers=AUTH, seed=seed, **fields, **kw)


def test_every_route_but_healthz_needs_the_token(app):
    assert requests.get(app.url + "healthz", timeout=10).status_code == 200
    for method, route in (("get", "v1/model"), ("get", ""), ("post", "v1/inpaint"), ("post", "v1/inpaint/stream")):
        r = getattr(requests, method)(app.url + route, timeout=10)
        assert r.status_code == 401 and r.json()["field"] == "authorization", route
        r = getattr(requests, method)(app.url + route, timeout=10, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401, route
    assert requests.get(app.url + "v1/model", timeout=10, headers=AUTH).status_code == 200
    assert call(app.url, QUICK).status_code == 200
    # A browser opens the page as /?token=...: it gets a same-site cookie the page's own calls then carry.
    browser = requests.Session()
    assert browser.get(app.url + "?token=wrong", timeout=10).status_code == 401
    page = browser.get(app.url + f"?token={TOKEN}", timeout=10)
    assert page.status_code == 200 and "samesite=strict" in page.headers["set-cookie"].lower()
    assert browser.get(app.url + "v1/model", timeout=10).status_code == 200
    assert requests.get(app.url + f"v1/model?token={TOKEN}", timeout=10).status_code == 401  # page routes only


def test_a_non_loopback_bind_without_a_token_refuses_to_start(serve_export):
    env = {k: v for k, v in os.environ.items() if k != "ONADE_SERVE_TOKEN"}
    r = subprocess.run([sys.executable, "-m", "ray_jobs.serve", "--checkpoint", serve_export, "--host", "0.0.0.0"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 1 and "refusing to listen on 0.0.0.0 without a token" in r.stderr


def test_a_request_past_its_deadline_gets_504_and_its_work_is_dropped(app):
    tic = time.monotonic()
    r = call(app.url, LONG)
    assert r.status_code == 504 and r.json()["field"] == "deadline"
    assert 5 < time.monotonic() - tic < 20
    # One request at a time on the replica: this one could not start for minutes were the run still going.
    tic = time.monotonic()
    assert call(app.url, QUICK).status_code == 200
    assert time.monotonic() - tic < 5


def test_past_the_queue_bound_503_with_retry_after(app):
    results = []

    def one(i):
        r = call(app.url, dict(strategy="independent-gibbs", steps=300), seed=i)
        results.append((r.status_code, r.headers.get("retry-after")))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(c for c, _ in results)
    assert codes.count(503) >= 3 and set(codes) <= {200, 503}, codes
    assert all(after == "3" for c, after in results if c == 503)
    assert call(app.url, QUICK).status_code == 200


def test_a_client_that_goes_away_frees_its_slot(app):
    with call(app.url, LONG, stream=True) as r:
        assert r.status_code == 200
        next(r.iter_lines())  # the start event: the run is on the replica
    tic = time.monotonic()
    assert call(app.url, QUICK).status_code == 200
    assert time.monotonic() - tic < 4, "the slot waited for the deadline instead of the disconnect"


def test_a_killed_replica_is_replaced_and_the_next_request_succeeds(app):
    import ray

    (name,) = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
               if a["name"].startswith("SERVE_REPLICA::onade#Inpainter")]
    replica = ray.get_actor(name, namespace="serve")
    status = {}

    def long_request():
        status["code"] = call(app.url, LONG).status_code

    t = threading.Thread(target=long_request)
    t.start()
    time.sleep(1.5)
    ray.kill(replica, no_restart=True)
    t.join(60)
    assert status["code"] >= 500
    deadline = time.monotonic() + 90
    while True:
        try:
            r = call(app.url, QUICK)
            if r.status_code == 200:
                break
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, "no replica came back"
        time.sleep(1)
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].startswith("SERVE_REPLICA::onade#Inpainter")]
    assert names and name not in names
