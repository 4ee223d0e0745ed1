"""One device per process, chosen from what Ray granted (ray_jobs.devices), on this GPU-less machine: the
decision itself, and a real Ray that advertises GPUs (Ray hands out GPU ids from its resource count; no GPU
needs to exist) to actors whose torch cannot use CUDA."""

import os
import tempfile

import pytest
import torch

import onade
from onade.config import Config, ModelConfig
from onade.tokenizer import Tokenizer
from ray_jobs.devices import check_gpus_per_process, cuda_problem, granted_device, idle_gpus_warning

CUDA_OK = lambda: None  # noqa: E731  (a process whose CUDA works: the decision as a GPU node makes it)


def test_a_process_computes_on_cuda_exactly_when_ray_granted_it_a_gpu():
    # Granted nothing: the CPU, even where CUDA works (Ray 2.60 leaves a no-GPU actor all of the node's GPUs).
    assert granted_device([], "0,1,2,3", CUDA_OK) == torch.device("cpu")
    # Granted GPU 2 while the node's workers share CUDA_VISIBLE_DEVICES=0,1,2,3: cuda:2, as Ray Train computes it.
    assert granted_device([2], "0,1,2,3", CUDA_OK) == torch.device("cuda", 2)
    assert granted_device(["3", "1"], "1,3", CUDA_OK) == torch.device("cuda", 1)
    # An actor sees only its own GPU (Ray sets CUDA_VISIBLE_DEVICES to it): cuda:0; two actors on half a GPU alike.
    assert granted_device([5], "5", CUDA_OK) == torch.device("cuda", 0)
    with pytest.raises(RuntimeError, match="does not list it"):
        granted_device([4], "0,1", CUDA_OK)
    # Ray told not to set CUDA_VISIBLE_DEVICES: every GPU is visible under its physical index, the granted id.
    assert granted_device([3], None, CUDA_OK) == torch.device("cuda", 3)


def test_a_gpu_grant_cuda_cannot_serve_is_an_error_naming_the_build():
    with pytest.raises(RuntimeError, match=r"Ray granted GPU\(s\) \[0\] .*unusable here"):
        granted_device([0], "0", lambda: "unusable here")
    assert "CPU-only build" in cuda_problem()  # this machine's torch: 2.13.0+cpu
    assert torch.__version__ in cuda_problem()


def test_gpus_per_process_must_be_usable_by_one_process():
    check_gpus_per_process(0, "--x", shareable=False)
    check_gpus_per_process(1, "--x", shareable=False)
    check_gpus_per_process(0.5, "--x", shareable=True)
    with pytest.raises(ValueError, match="NCCL refuses two ranks"):
        check_gpus_per_process(0.5, "--gpus-per-worker", shareable=False)
    with pytest.raises(ValueError, match="one GPU, the others would sit idle"):
        check_gpus_per_process(2, "--gpus-per-worker", shareable=True)
    with pytest.raises(ValueError, match=">= 0"):
        check_gpus_per_process(-1, "--x", shareable=True)


def test_gpus_left_idle_by_cpu_workers_are_one_warning_naming_the_flag():
    warning = idle_gpus_warning({"CPU": 64.0, "GPU": 8.0}, 0)
    assert warning == ("warning: the cluster has 8 GPUs but --gpus-per-worker is 0: workers run on CPU; "
                       "pass --gpus-per-worker 1")
    assert "has 1 GPU but" in idle_gpus_warning({"GPU": 1.0}, 0)
    assert idle_gpus_warning({"CPU": 8.0}, 0) is None  # no GPUs: CPU workers are the only choice
    assert idle_gpus_warning({"CPU": 8.0, "GPU": 0.0}, 0) is None
    assert idle_gpus_warning({"GPU": 8.0}, 1) is None and idle_gpus_warning({"GPU": 8.0}, 0.5) is None


@pytest.mark.parametrize("argv", [
    ["-m", "ray_jobs.train", "--data", "d", "--output", "o", "--name", "n", "--gpus-per-worker", "0.5"],
    ["-m", "ray_jobs.train", "--data", "d", "--output", "o", "--name", "n", "--gpus-per-worker", "2"],
    ["-m", "ray_jobs.inpaint", "--checkpoint", "c", "--input", "i", "--output", "o", "--gpus-per-worker", "2"],
    ["-m", "ray_jobs.evaluate", "--checkpoint", "c", "--data", "d", "--gpus-per-worker", "1.5"],
    ["-m", "ray_jobs.evaluate", "--checkpoint", "c", "--data", "d", "--accelerator-type", "A10G"],
])
def test_gpu_flags_one_process_cannot_use_are_usage_errors(argv, capsys):
    import importlib

    module = importlib.import_module(argv[1])
    with pytest.raises(SystemExit) as exit_info:
        module.parse_args(argv[2:])
    assert exit_info.value.code == 2
    assert "--gpus-per-" in capsys.readouterr().err


@pytest.fixture(scope="module")
def ray_with_gpus():
    """A real local Ray advertising 2 GPUs, for actors to be granted them."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    tmp = tempfile.mkdtemp(prefix="ray_", dir="/tmp")
    ray.init(num_cpus=2, num_gpus=2, _temp_dir=tmp, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"DS_ACCELERATOR": "cpu"}})
    yield
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_actors_granted_no_gpu_run_on_cpu_and_granted_ones_refuse_a_cpu_torch(ray_with_gpus):
    import ray

    @ray.remote
    def device_of():
        from ray_jobs.devices import actor_device

        return str(actor_device()), ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES")

    device, ids, _ = ray.get(device_of.options(num_gpus=0).remote())
    assert (device, ids) == ("cpu", [])
    with pytest.raises(ray.exceptions.RayTaskError, match=r"granted GPU\(s\) \[\d\].*CPU-only build"):
        ray.get(device_of.options(num_gpus=0.5).remote())


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_the_driver_warns_when_the_cluster_has_gpus_the_workers_leave_idle(ray_with_gpus, capsys):
    from ray_jobs.devices import warn_idle_gpus

    warn_idle_gpus(0)
    assert capsys.readouterr().err == ("warning: the cluster has 2 GPUs but --gpus-per-worker is 0: workers run on "
                                       "CPU; pass --gpus-per-worker 1\n")
    warn_idle_gpus(1)
    assert capsys.readouterr().err == ""


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_inpaint_job_on_a_gpu_its_torch_cannot_use_fails_naming_the_cause(ray_with_gpus, tmp_path):
    """Before: the actor fell back to the CPU (one thread) and the job 'succeeded' at a fraction of the speed."""
    from PIL import Image

    from ray_jobs import inpaint

    tok = Tokenizer.train(["a red disc", "a green square"] * 4, None, vocab_size=30)
    cfg = Config(model=ModelConfig(image_size=16, width=16, num_blocks=4, dilations=(1, 2, 4, 8), embed_dim=4,
                                   norm_groups=4, vocab_size=tok.vocab_size, text_dim=16)).validate()
    ckpt = onade.save_checkpoint(tmp_path / "export", onade.build_model(cfg), cfg, tok)
    (tmp_path / "in").mkdir()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(tmp_path / "in" / "a.png")
    with pytest.raises(Exception, match="CPU-only build"):
        inpaint.main(["--checkpoint", str(ckpt), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                      "--gpus-per-worker", "1", "--steps", "2", "--no-progress"])
