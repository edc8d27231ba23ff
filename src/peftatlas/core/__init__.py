"""The adapter engine: method interface, target matching, layer wrapper, model wrapper, file I/O."""
