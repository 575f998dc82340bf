"""The systemd unit template and its environment file, shipped as ``edge.systemd`` (see ``edge-service``)."""
