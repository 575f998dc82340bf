"""Device tests: what a Jetson runs, on artifacts the host exported (see tests/device_bundle.py)."""
