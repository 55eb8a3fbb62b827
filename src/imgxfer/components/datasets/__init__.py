"""Built-in datasets. Each module exposes factories registered in :mod:`imgxfer.components.builtin`."""
