"""The package version, in one place (read by setuptools and by the S3 User-Agent)."""

__version__ = "0.1.0"
