"""baas: the command-line client of BAAS (``pip install ./cli``)."""

__version__ = "1.0"
