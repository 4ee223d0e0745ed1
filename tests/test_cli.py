"""The `python -m ray_jobs.X` wrapper, in process: a user's mistake ends the job with one line naming it."""

import pytest

from ray_jobs.cli import run
from ray_jobs.inpaint import main as inpaint_main
from ray_jobs.train import main as train_main


def test_a_config_mistake_is_one_line_naming_the_key(tmp_path):
    argv = ["--data", str(tmp_path), "--output", str(tmp_path / "runs"), "--name", "x", "--set", "model.widht=8"]
    with pytest.raises(SystemExit) as e:
        run(lambda: train_main(argv))
    assert str(e.value.code).startswith("config error: ") and "model.widht" in str(e.value.code)
    assert "\n" not in str(e.value.code)


def test_a_bad_path_is_one_line_and_the_exit_code_comes_from_the_result(tmp_path):
    with pytest.raises(SystemExit) as e:
        run(lambda: inpaint_main(["--checkpoint", str(tmp_path / "nothing"), "--input", str(tmp_path),
                                  "--output", str(tmp_path / "out")]))
    assert str(e.value.code).startswith("error: ") and "not an onade checkpoint" in str(e.value.code)
    for result, code in ((0, 0), (3, 3)):
        with pytest.raises(SystemExit) as e:
            run(lambda: result, exit_code=lambda r: r)
        assert e.value.code == code


def test_evaluate_takes_inpaints_pool_flags_and_the_old_spellings_parse_the_same_with_a_deprecation(capsys):
    from ray_jobs.evaluate import parse_args

    base = ["--checkpoint", "c", "--data", "d"]
    new = parse_args([*base, "--workers", "3", "--gpus-per-worker", "0.5", "--cpus-per-worker", "2"])
    assert capsys.readouterr().err == ""
    old = parse_args([*base, "--actors", "3", "--gpus-per-actor", "0.5", "--cpus-per-actor", "2"])
    assert vars(old) == vars(new) and (new.workers, new.gpus_per_worker, new.cpus_per_worker) == (3, 0.5, 2.0)
    assert capsys.readouterr().err.splitlines() == ["--actors is deprecated: use --workers",
                                                    "--gpus-per-actor is deprecated: use --gpus-per-worker",
                                                    "--cpus-per-actor is deprecated: use --cpus-per-worker"]
    # The defaults are the new flags', and an old spelling is still checked like the new one.
    assert vars(parse_args(base))["workers"] == 0 and "actors" not in vars(parse_args(base))
    with pytest.raises(SystemExit):
        parse_args([*base, "--gpus-per-actor", "2"])
    assert "--gpus-per-worker 2" in capsys.readouterr().err
    # Help lists the shared vocabulary only.
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    shown = capsys.readouterr().out
    assert "--workers" in shown and "--gpus-per-worker" in shown and "--actors" not in shown


def test_the_versions_line_names_python_torch_ray_deepspeed_and_the_commit(tmp_path):
    import importlib.metadata
    import platform
    import subprocess

    import ray
    import torch

    from ray_jobs.ray_env import REPO_ROOT, versions_line

    line = versions_line()
    assert line.startswith("versions: onade ") and "\n" not in line
    for part in (f"python {platform.python_version()}", f"torch {torch.__version__}", f"ray {ray.__version__}",
                 f"deepspeed {importlib.metadata.version('deepspeed')}"):
        assert part in line
    head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # a checkout (not a copy without .git): its commit
        assert line.split(",")[0].removeprefix("versions: onade ").removesuffix("-dirty") == head.stdout[:12]
    # A copy without .git (a `ray job submit --working-dir` upload), or a folder inside another repository.
    assert versions_line(tmp_path).startswith("versions: onade commit unknown, python ")
    assert versions_line(REPO_ROOT / "ray_jobs").startswith("versions: onade commit unknown, ")


@pytest.mark.parametrize("job, argv", [
    ("train", ["--data", "d", "--output", "o", "--name", "x", "--set", "model.widht=8"]),
    ("evaluate", ["--checkpoint", "{tmp}/nothing", "--data", "{tmp}"]),
    ("inpaint", ["--checkpoint", "{tmp}/nothing", "--input", "{tmp}", "--output", "{tmp}/out"]),
])
def test_each_job_prints_its_versions_first(job, argv, tmp_path, capsys):
    import importlib

    main = importlib.import_module(f"ray_jobs.{job}").main
    with pytest.raises(SystemExit):  # a mistake of the user's, found before any Ray starts
        run(lambda: main([a.format(tmp=tmp_path) for a in argv]))
    assert capsys.readouterr().out.splitlines()[0].startswith("versions: onade ")
