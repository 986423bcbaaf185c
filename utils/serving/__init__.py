"""Serving the ensemble over HTTP: the web app and its page."""
