"""Subcommands of the ``encred`` CLI, one module each (see vlmeval_encred.cli)."""
