"""distilnas.spaces: what is searched (layer mappings, supernet operations, Kronecker shapes)."""
