"""``edge-service``: install, uninstall and deploy edge-classify as a systemd service; sd_notify for the loop."""
