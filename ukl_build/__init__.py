"""ukl-build: turn a server application into a bootable Linux unikernel."""

__version__ = "0.1.0"
