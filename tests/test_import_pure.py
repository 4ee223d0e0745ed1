import subprocess
import sys

BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('ray', 'deepspeed', 'boto3', 'webdataset'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import onade, onade.masks, onade.loss, onade.metrics, onade.checkpoint, onade.config
import pkgutil, importlib
for m in pkgutil.iter_modules(onade.__path__):
    importlib.import_module('onade.' + m.name)
m = onade.build_model('debug')
print('ok', sorted(k for k in sys.modules if k.split('.')[0] in ('ray', 'deepspeed', 'boto3', 'webdataset')))
"""


def test_onade_imports_without_ray_deepspeed_boto3_webdataset():
    out = subprocess.run([sys.executable, "-c", BLOCKER], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok []"
