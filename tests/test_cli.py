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
