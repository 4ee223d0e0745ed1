"""onade: a caption-conditioned orderless-NADE ConvNet for image inpainting (pure PyTorch)."""

from onade.config import Config, ConfigError, SampleConfig, get_preset, load_config
from onade.model import ONADE, build_model
from onade.checkpoint import Loaded, load_checkpoint, save_checkpoint
from onade.plans import LossProfile
from onade.sampling import inpaint
from onade.precision import resolve_precision

__all__ = ["Config", "ConfigError", "SampleConfig", "LossProfile",
           "get_preset", "load_config", "ONADE", "build_model", "Loaded",
           "load_checkpoint", "save_checkpoint", "inpaint", "resolve_precision"]
