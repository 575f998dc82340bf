"""Text files shipped as package data (``labels/``, ``systemd/``), installed or in a source checkout.

Installed, ``labels/`` is the package ``edge.labels`` and ``systemd/`` is ``edge.systemd``; in a checkout
that was never installed they are plain folders beside ``edge/``. ``pkgutil.get_data`` reads both the
installed layout and zipped installs on every Python the device side supports (3.6 and later), where
``importlib.resources.files`` would need 3.9::

    text = package_text("edge.labels", "imagenet.txt")
"""
import pkgutil
from pathlib import Path


def package_text(package: str, name: str) -> str:
    """The UTF-8 text of ``name`` in ``package`` (``edge.labels`` or ``edge.systemd``)."""
    try:
        data = pkgutil.get_data(package, name)
    except ModuleNotFoundError:
        data = None
    if data is None:  # a source checkout: the package is the top-level folder of the same name
        folder = package.rsplit(".", 1)[-1]
        return (Path(__file__).resolve().parents[1] / folder / name).read_text(encoding="utf-8")
    return data.decode("utf-8")
