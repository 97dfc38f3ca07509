"""distilnas.spaces: what is searched (layer mappings, supernet operations, Kronecker shapes)."""

from distilnas.spaces.mapping import LayerMapping

__all__ = ["LayerMapping"]
