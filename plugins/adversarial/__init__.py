"""Built-in topic "How easily it is fooled": adversarial examples, the linear explanation, noise across models."""

from __future__ import annotations

from convlens import hookimpl
from convlens.methods import Method

from .attacks import ADVERSARIAL_ATTACK
from .goldfish import GOLDFISH_WEIGHTS
from .linear import LINEAR_EXPLANATION
from .noise import NOISE_PREDICTIONS


@hookimpl
def register_methods() -> list[Method]:
    return [ADVERSARIAL_ATTACK, LINEAR_EXPLANATION, GOLDFISH_WEIGHTS, NOISE_PREDICTIONS]
