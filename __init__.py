"""distilnas: compress BERT-family models by searching layer mappings and architectures, then distilling.

Subpackages, one floor each (a module imports only from its own floor or below):
``distill`` (training core) < ``spaces`` < ``proxies`` < ``results`` < ``search`` (strategies, CLI).
"""

__version__ = "0.1.0"
