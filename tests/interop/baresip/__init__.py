"""baresip as a text/plain-only test peer."""
