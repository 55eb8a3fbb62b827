"""Built-in transfer methods (adapters)."""
