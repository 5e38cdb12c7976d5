"""Model files in every supported format behind one interface (:class:`convlens.models.base.Model`)."""

from .base import Forward, LayerInfo, Model, ModelCard

__all__ = ["Forward", "LayerInfo", "Model", "ModelCard"]
