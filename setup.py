"""Legacy shim: the metadata is in setup.cfg. pip 21.3.1 on Python 3.6 needs it for ``pip install -e .``
(setuptools 59.6, the last for 3.6, predates PEP 660 editable installs)."""
from setuptools import setup

setup()
