"""pipeline: zero-downtime blue-green deploys of a Dockerised Java service behind nginx."""

__version__ = "0.1.0"
