"""onade: a caption-conditioned orderless-NADE ConvNet for image inpainting (pure PyTorch).

The names below load on first use, so that `onade.tokenizer` (which Ray Data's decode tasks and the shard
builder unpickle or import) does not pull in torch: about 1.3 s of every fresh data worker's start."""

import importlib

_HOME = {"Config": "config", "ConfigError": "config", "SampleConfig": "config", "get_preset": "config",
         "load_config": "config", "ONADE": "model", "build_model": "model", "Loaded": "checkpoint",
         "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint", "LossProfile": "plans",
         "inpaint": "sampling", "resolve_precision": "precision"}

__all__ = list(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'onade' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"onade.{_HOME[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOME])
