"""``python -m baas_agent`` is ``baas-agent``."""

from __future__ import annotations

from baas_agent.cli import main

raise SystemExit(main())
