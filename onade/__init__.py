"""onade: a caption-conditioned orderless-NADE ConvNet for image inpainting (pure PyTorch).

The names below load on first use, so that `onade.tokenizer` (which Ray Data's decode tasks and the shard
builder unpickle or import) does not pull in torch: about 1.3 s of every fresh data worker's start."""

import importlib

_HOME = {"Config": "config", "ConfigError": "config", "SampleConfig": "config", "get_preset": "config",
         "load_config": "config", "ONADE": "model", "build_model": "model", "Loaded": "export_format",
         "load_checkpoint": "export_format", "save_checkpoint": "export_format", "LossProfile": "plans",
         "inpaint": "sampling", "resolve_precision": "precision"}

__all__ = list(_HOME)


def __getattr__(name: str):
    if name in _HOME:
        value = getattr(importlib.import_module(f"onade.{_HOME[name]}"), name)
    else:  # a submodule used as `onade.precision` after a bare `import onade`
        try:
            value = importlib.import_module(f"onade.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"onade.{name}":
                raise
            raise AttributeError(f"module 'onade' has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOME])
