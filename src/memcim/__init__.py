"""memcim: analog in-memory computing on memristor crossbars."""
__version__ = "0.1.0"
