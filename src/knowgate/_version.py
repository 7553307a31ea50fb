"""The package version, in a leaf module so that no room needs to import the package root."""

__version__ = "0.1.0"
