"""OpenPods: a self-hosted implementation of the Tapis Pods API (v1.9.0)."""

__version__ = "0.1.0"
TAPIS_API_VERSION = "1.9.0"
