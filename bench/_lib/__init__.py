"""What the benchmark scripts of ``bench/`` share, and the parts each one measures.

Shared: ``util`` (constants, processes, timing, sizes, logging), ``testimage`` (the
generated test disk), ``baas`` (a throwaway BAAS under gunicorn), ``servers`` (nginx,
the sink, the sendfile client), ``table`` (``catalogue.py``'s rows and their table),
``deployments`` (a bench machine deployed by the real agent: ``flash.py``,
``syncback.py``). ``catalogue.py``'s parts: ``uploads``, ``downloads``, ``cli``.
``flash.py``'s: ``flash_rounds``, ``flash_phases``, ``flash_report``.
"""
