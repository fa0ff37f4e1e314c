"""The BAAS management agent (``baas-agent``), the client side of docs/agent-protocol.md.

Standard library only, with ``zstandard`` used when importable. No Django here:
this package runs inside the management OS of a machine.
"""

from __future__ import annotations

__version__ = "1.0"
