"""Development-only code: tiny-model builders, test factories, the schema writer and static
Input checker. Tools and tests import it; the serving path never does."""
