"""Training: configuration, the maximum-likelihood loop, checkpoints and run directories."""

from clayflow.train.checkpoint import load
from clayflow.train.config import TrainConfig
from clayflow.train.evaluate import evaluate_nll
from clayflow.train.loop import TrainingStopped
from clayflow.train.run import TrainResult
from clayflow.train.start import train

__all__ = ["TrainConfig", "TrainResult", "TrainingStopped", "evaluate_nll", "load", "train"]
