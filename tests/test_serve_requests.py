"""The serve app's pure parts, without Ray: checking a request (ray_jobs.serve.requests) and the options
(ray_jobs.serve.options). The HTTP behaviour is tests/test_serve.py's."""

import io

import numpy as np
import pytest
from PIL import Image

from onade.config import SampleConfig
from ray_jobs.inpaint_inputs import image_seeds
from ray_jobs.serve.options import TOKEN_ENV, ServeOptions
from ray_jobs.serve.requests import RequestError, parse


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


IMAGE = png(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8))


def check(form: dict, image=("a/b\\photo.png", IMAGE), mask=None, **kw):
    limits = dict(image_size=16, max_pixels=10_000, max_samples=4, max_steps=100, defaults=SampleConfig())
    return parse(form, image, mask, **{**limits, **kw})


def test_a_request_becomes_the_batch_jobs_hole_window_and_seeds():
    job = check({"hole": "box:4,2,10,8", "caption": "a cat", "seed": "5", "samples": "2", "steps": "12"})
    assert job.name == "photo.png"  # the base name only: it keys seeds, it never names a file
    assert job.hidden_HW.shape == (30, 40) and job.hidden_HW.sum() == 80 and job.hidden_HW[2:10, 4:14].all()
    assert job.image_SSC.shape == (16, 16, 3) and job.hidden_SS.any()
    assert job.seeds == image_seeds(5, "photo.png", 2)
    assert job.passes() == 12 and job.sample.steps == 12
    assert job.command("ckpt/") == ("python -m ray_jobs.inpaint --checkpoint ckpt/ --input photos/ --output "
                                    "inpainted/ --mask box:4,2,10,8 --seed 5 --samples 2 --format png --steps 12")
    other = check({"hole": "box:4,2,10,8", "steps": "12", "guidance": "2"})
    assert job.group != other.group and job.group == check({"steps": "12"}).group


def test_a_mask_image_gives_the_hole():
    mask = np.zeros((30, 40), np.uint8)
    mask[5:9, 6:20] = 255
    job = check({}, mask=png(mask))
    assert job.hole == "mask" and job.hidden_HW.sum() == 56 and "--mask masks/" in job.command("c")


@pytest.mark.parametrize("form, kw, field, status", [
    ({"colour": "red"}, {}, "colour", 400),
    ({"caption": "x" * 2001}, {}, "caption", 400),
    ({"samples": "5"}, {}, "samples", 400),
    ({"samples": "two"}, {}, "samples", 400),
    ({"seed": "-1"}, {}, "seed", 400),
    ({"format": "bmp"}, {}, "format", 400),
    ({"output": "image", "samples": "2"}, {}, "output", 400),
    ({"strategy": "dream"}, {}, "strategy", 400),
    ({"temperature": "hot"}, {}, "temperature", 400),
    ({"top_p": "2"}, {}, "top_p", 400),
    ({"steps": "101"}, {}, "steps", 400),
    ({"steps": "0"}, {}, "steps", 400),
    ({"hole": "box:0,0,35,5"}, {}, "hole", 400),
    ({}, {"image": ("x.png", b"GIF89a broken")}, "image", 400),
    ({}, {"image": None}, "image", 400),
    ({}, {"image": ("big.png", png(np.zeros((101, 100, 3), np.uint8)))}, "image", 413),  # 10,100 pixels
    ({"hole": "center"}, {"mask": png(np.full((8, 8), 255, np.uint8))}, "hole", 400),
    ({}, {"mask": png(np.full((8, 8), 255, np.uint8))}, "mask", 400),
    ({}, {"mask": png(np.zeros((30, 40), np.uint8))}, "mask", 400),
])
def test_each_refusal_names_its_field(form, kw, field, status):
    with pytest.raises(RequestError) as e:
        check(form, **kw)
    assert (e.value.field, e.value.status) == (field, status), e.value.message
    assert e.value.to_json()["error"]


def test_options_refuse_a_public_bind_without_a_token(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert ServeOptions(checkpoint="c").validate().host == "127.0.0.1"
    with pytest.raises(ValueError, match="refusing to listen on 0.0.0.0 without a token"):
        ServeOptions(checkpoint="c", host="0.0.0.0").validate()
    monkeypatch.setenv(TOKEN_ENV, "secret")
    assert ServeOptions(checkpoint="c", host="0.0.0.0").validate().token == "secret"


def test_options_from_a_serve_config_and_the_deployment_they_make():
    with pytest.raises(ValueError, match="unknown serve option.*'replicas'"):
        ServeOptions.from_args({"checkpoint": "c", "replicas": 2})
    with pytest.raises(ValueError, match="min_replicas"):
        ServeOptions.from_args({"checkpoint": "c", "min_replicas": 3, "max_replicas": 2})
    o = ServeOptions.from_args({"checkpoint": "c", "min_replicas": 1, "max_replicas": 4, "gpus_per_replica": 1,
                                "accelerator_type": "A10G", "max_queued_requests": 7, "retry_after_s": 5})
    d = o.deployment_options()
    assert d["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 4.0}
    assert d["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 1, "accelerator_type": "A10G"}
    assert d["max_queued_requests"] == 7
    assert (d["backpressure_config"].status_code, d["backpressure_config"].retry_after_s) == (503, 5)
    assert "num_replicas" in ServeOptions(checkpoint="c").validate().deployment_options()
    assert o.request_bytes() > 2 * 4 * o.max_pixels
