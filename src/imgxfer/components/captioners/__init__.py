"""Built-in captioners."""
