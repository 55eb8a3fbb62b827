"""Built-in encoders and the preprocessing they share."""
