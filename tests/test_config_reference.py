"""docs/config-reference.md is what docs/config_reference.py writes from onade/config.py today."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docs" / "config_reference.py"
REFERENCE = ROOT / "docs" / "config-reference.md"


def test_config_reference_is_up_to_date(tmp_path):
    fresh = tmp_path / "config-reference.md"
    subprocess.run([sys.executable, str(SCRIPT), "--output", str(fresh)], cwd=ROOT, check=True,
                   capture_output=True, text=True)
    assert fresh.read_text() == REFERENCE.read_text(), (
        "docs/config-reference.md is stale (onade/config.py changed): run `python docs/config_reference.py`")


def test_check_flag_names_the_command_when_stale(tmp_path):
    stale = tmp_path / "config-reference.md"
    stale.write_text("old\n")
    done = subprocess.run([sys.executable, str(SCRIPT), "--check", "--output", str(stale)], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 1 and "python docs/config_reference.py" in done.stderr


def test_every_key_is_listed_with_its_description():
    from onade.config import Config

    text = REFERENCE.read_text()
    for section in Config.__dataclass_fields__:
        for key in type(getattr(Config(), section)).__dataclass_fields__:
            assert f"| `{section}.{key}` |" in text, f"{section}.{key} is missing from {REFERENCE.name}"
    # a description comes from the comment beside its field in onade/config.py
    assert "| an attention merger after every k blocks (0 = no caption conditioning) |" in text


def test_the_script_imports_no_ray():
    code = (f"import runpy, sys; sys.argv = ['x', '--check']\n"
            f"try:\n    runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'torch', 'deepspeed')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
