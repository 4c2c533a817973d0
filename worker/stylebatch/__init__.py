"""stylebatch: batch neural style transfer for videos, locally or on Kubernetes."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("stylebatch")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
