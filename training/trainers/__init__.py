"""Trainers per kind; `TRAINERS` maps a CLI kind to its class."""

from training.trainers.base import Trainer
from training.trainers.policy import DenseDPOTrainer, DPOTrainer, FigaTrainer, SFTTrainer
from training.trainers.reward import SeqRMTrainer, TokenRMTrainer

TRAINERS: dict[str, type[Trainer]] = {
    "token-rm": TokenRMTrainer,
    "seq-rm": SeqRMTrainer,
    "figa": FigaTrainer,
    "sft": SFTTrainer,
    "dpo": DPOTrainer,
    "dense-dpo": DenseDPOTrainer,
}
