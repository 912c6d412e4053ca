"""RenderQ client side: the `renderq` command line and its HTTP client."""

__version__ = "0.1.0"
