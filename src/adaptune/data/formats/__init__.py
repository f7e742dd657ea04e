"""Low-level parsers, one module per file format; :mod:`adaptune.data.readers` is the public entry point."""
