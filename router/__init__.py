"""router: a cluster message router speaking the Icinga 2 cluster protocol."""

__version__ = "0.1.0"
