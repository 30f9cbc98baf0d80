"""Training: the Trainer and its checkpoints."""

from openrecog.train.trainer import Trainer, TrainResult

__all__ = ["TrainResult", "Trainer"]
