"""minirlvr: entropy-related RLVR methods on a tiny transformer doing synthetic arithmetic."""
__version__ = "0.1.0"
