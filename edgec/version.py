"""edgec's version (the one in pyproject.toml), importable from every layer without importing the
package's public face (``edgec/__init__``, which imports the pipeline)."""

__version__ = "0.1.0"
