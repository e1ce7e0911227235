"""The version of repid, in one place (imported by the package and by its modules)."""

__version__ = "2.0.0.dev0"
