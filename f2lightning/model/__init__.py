from f2lightning.model.config import Florence2Config, TextConfig, VisionConfig
from f2lightning.model.florence2 import Florence2

__all__ = ["Florence2", "Florence2Config", "TextConfig", "VisionConfig"]
