"""stylebatch: batch neural style transfer for videos, locally or on Kubernetes.

    import stylebatch
    result = stylebatch.stylize_video("in.mp4", "out.mp4", style="ink-wash", progress=print)

The stages, over typed requests, are in stylebatch.api (preprocess, stylize, postprocess). Importing
stylebatch imports neither torch nor PyAV. See docs/api.md.
"""

from stylebatch.errors import BadInput, Interrupted, StylebatchError, TransientError
from stylebatch.requests import (
    EncodingOptions, ModelOptions, PostprocessRequest, PreprocessRequest, RunRequest, StylizeRequest,
)

_LAZY = {"stylize_video": "stylebatch.api", "list_styles": "stylebatch.api", "Result": "stylebatch.run",
         "__version__": None}  # None: no module to import it from (__getattr__ reads the package's metadata)


def __getattr__(name: str):
    """stylize_video, list_styles and Result, imported when first used (the operator imports this
    package for its request types and needs none of the rest); __version__ read when first asked
    for (importlib.metadata, 4.6 MiB, would stay in the `stylebatch run` launcher beside its ranks)."""
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("stylebatch")
        except PackageNotFoundError:  # running from a source tree that was never installed
            return "0.0.0"
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'stylebatch' has no attribute {name!r}")


def __dir__() -> list[str]:
    """What the module holds and what __getattr__ gives: tab completion (a notebook's) shows
    stylize_video and list_styles before they are first used, and imports nothing to do so."""
    return sorted({*globals(), *_LAZY})


__all__ = ["stylize_video", "Result", "list_styles", "StylebatchError", "BadInput", "TransientError", "Interrupted",
           "EncodingOptions", "ModelOptions", "PreprocessRequest", "StylizeRequest", "PostprocessRequest",
           "RunRequest", "__version__"]
