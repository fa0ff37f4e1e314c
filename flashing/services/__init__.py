"""Writes for machines, leases and deployments; see the modules of this package."""
