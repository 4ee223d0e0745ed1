import ast
import subprocess
import sys
from pathlib import Path

HEAVY = ('ray', 'deepspeed', 'boto3', 'botocore', 'webdataset', 'pyarrow')
REPOSITORY = ('data', 'ray_jobs')  # the repository's job folders: the library ships without them
ONADE = Path(__file__).resolve().parent.parent / "onade"

BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in HEAVY + REPOSITORY:
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import onade, onade.masks, onade.loss, onade.metrics, onade.export_format, onade.config
import pkgutil, importlib
for m in pkgutil.iter_modules(onade.__path__):
    importlib.import_module('onade.' + m.name)
m = onade.build_model('debug')
print('ok', sorted(k for k in sys.modules if k.split('.')[0] in HEAVY))
"""

# A local checkpoint is read by onade itself: with boto3 and the repository's data/ present but not blocked,
# neither is imported. An s3:// one is refused without reaching for data/, naming the ways out.
LOAD = """
import sys, tempfile
import onade
from onade.tokenizer import Tokenizer
cfg = onade.load_config('debug')
tok = Tokenizer.train(['a red disc', 'a blue square'] * 8, None, vocab_size=cfg.model.vocab_size)
with tempfile.TemporaryDirectory() as d:
    onade.save_checkpoint(d, onade.build_model(cfg), cfg, tok)
    onade.load_checkpoint(d)
print('ok', sorted(k for k in sys.modules if k.split('.')[0] in HEAVY + ('data',)))
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'data':
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
try:
    onade.load_checkpoint('s3://bucket/runs/x/export')
except ValueError as e:
    print('s3:', e)
"""


def run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", f"HEAVY = {HEAVY!r}\nREPOSITORY = {REPOSITORY!r}\n" + code],
                         capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_onade_imports_without_ray_deepspeed_boto3_webdataset():
    assert run(BLOCKER).strip() == "ok []"


def test_onade_imports_nothing_from_the_repositorys_job_folders():
    """Read statically, so an import inside a function (which the blocker above never runs) counts too."""
    found = []
    for path in sorted(ONADE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            found += [f"{path.name}:{node.lineno} imports {n}" for n in names if n.split(".")[0] in REPOSITORY]
    assert len(list(ONADE.glob("*.py"))) > 10 and found == []


def test_loading_a_local_checkpoint_imports_no_s3_client_and_s3_names_the_ways_out():
    first, s3 = run(LOAD).strip().splitlines()
    assert first == "ok []"
    assert "aws s3 cp --recursive s3://bucket/runs/x/export" in s3 and "repository root" in s3
    assert "ray_jobs.train_checkpoints.load_export" in s3


def test_data_tasks_load_without_torch():
    """Ray Data's decode and write tasks import these modules and unpickle a Tokenizer and a SampleConfig: a
    fresh data worker must not pay for importing torch (about 1.3 s each)."""
    code = ("import pickle, sys\nfrom onade.tokenizer import Tokenizer\nfrom onade.config import SampleConfig\n"
            "import onade.holes, ray_jobs.data, ray_jobs.inpaint_inputs, ray_jobs.outputs\n"
            "tok = Tokenizer.train(['a red disc', 'a blue square'] * 8, None, vocab_size=32)\n"
            "pickle.loads(pickle.dumps(tok)).encode_batch_numpy(['a red disc'], 8)\n"
            "pickle.loads(pickle.dumps(SampleConfig())).validate()\n"
            "print(sorted(k for k in sys.modules if k.split('.')[0] == 'torch'))")
    assert run(code).strip() == "[]"


def test_onade_names_and_submodules_load_on_first_use():
    code = ("import onade\nassert onade.precision.resolve_precision('fp32') == 'fp32'\n"
            "assert onade.build_model(onade.load_config('debug')).__class__ is onade.ONADE\n"
            "try:\n    onade.nothing\nexcept AttributeError as e:\n    print(e)\n")
    assert run(code).strip() == "module 'onade' has no attribute 'nothing'"
