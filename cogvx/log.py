"""One log function: a line on stdout, flushed at once (coglet attributes lines as they arrive)."""


def log(message: str) -> None:
    """Print one log line and flush it, so it lands in the prediction or setup it belongs to."""
    print(message, flush=True)
