"""Shared tiny models for the nn tests (trained in about a second on sklearn's digits)."""
import copy
import functools

import torch
from torch import nn

from memcim.data.digits import load_digits
from memcim.nn.models import build_model
from memcim.nn.train import train


@functools.lru_cache(maxsize=None)
def _trained_digits_mlp():
    model = build_model("mlp-48", (1, 8, 8), 10, seed=0)
    train(model, load_digits("train"), epochs=25, lr=1e-2, batch_size=64, seed=0, progress=False)
    return model.eval()


def digits_mlp():
    """A 64-48-10 MLP trained on the 8x8 digits (about 95 % test accuracy); a fresh copy each call
    (trained once), so a test that changes it (``.double()`` works in place) cannot leak into others."""
    return copy.deepcopy(_trained_digits_mlp())


class TinyCNN(nn.Sequential):
    def __init__(self):
        torch.manual_seed(0)
        super().__init__(nn.Conv2d(1, 3, 3, padding=1), nn.Softplus(), nn.AvgPool2d(2),
                         nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16, 10))
