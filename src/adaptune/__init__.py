"""adaptune: adapter fine-tuning of frozen pretrained transformers (train, evaluate, save, predict, serve)."""

__version__ = "0.1.0"

from adaptune.api import TrainResult, train
from adaptune.config import RunConfig, load_config
from adaptune.inference import Predictor

__all__ = ["Predictor", "RunConfig", "TrainResult", "__version__", "load_config", "train"]
