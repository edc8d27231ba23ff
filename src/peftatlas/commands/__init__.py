"""CLI subcommands; each module registers one (see :mod:`peftatlas.cli`)."""
