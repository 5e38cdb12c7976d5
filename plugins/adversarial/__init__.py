"""Built-in topic "How easily it is fooled": adversarial examples, the linear explanation, noise across models."""

from __future__ import annotations

from convlens import hookimpl
from convlens.methods import Method

from .attacks import ADVERSARIAL_ATTACK
from .fooling import FOOLING_EVOLUTION
from .fooling_gradient import FOOLING_GRADIENT
from .goldfish import GOLDFISH_WEIGHTS
from .linear import LINEAR_EXPLANATION
from .noise import NOISE_PREDICTIONS
from .nudge import LINEAR_NUDGE
from .patch import ADVERSARIAL_PATCH, APPLY_PATCH


@hookimpl
def register_methods() -> list[Method]:
    return [
        ADVERSARIAL_ATTACK,
        LINEAR_EXPLANATION,
        GOLDFISH_WEIGHTS,
        LINEAR_NUDGE,
        NOISE_PREDICTIONS,
        ADVERSARIAL_PATCH,
        APPLY_PATCH,
        FOOLING_GRADIENT,
        FOOLING_EVOLUTION,
    ]
