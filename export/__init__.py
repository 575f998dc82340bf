"""Host side of edge-classifier: fine-tune torchvision classifiers and export them as artifacts.

Needs the ``export`` extra (torch, torchvision, onnx): ``pip install "edge-classifier[export]"``.
"""

__version__ = "0.1.0"
