"""efficientnet family."""
