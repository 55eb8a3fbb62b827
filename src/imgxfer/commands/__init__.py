"""Commands the built-in plugin adds to ``imgxfer`` through the ``register_commands``
hook, one module each; every command is a thin layer over functions importable from
Python."""
