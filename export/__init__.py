"""Host side of edge-classifier: fine-tune torchvision classifiers and export them as artifacts.

Needs the ``export`` extra (torch, torchvision, onnx): ``pip install ".[export]" in the edge-classifier checkout``.
"""

from edge import __version__  # one version for the one distribution

__all__ = ["__version__"]
