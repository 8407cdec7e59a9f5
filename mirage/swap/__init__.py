"""Face swappers: embedded ``mesh`` and neural ``inswapper``."""
