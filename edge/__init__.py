"""Device side of edge-classifier: run an exported artifact on images, cameras and streams.

Lean on purpose: numpy, OpenCV and one inference backend. With an ONNX artifact torch is never
imported (memory on a 4 GB Jetson Nano, and start-up time).
"""

__version__ = "0.1.0"
