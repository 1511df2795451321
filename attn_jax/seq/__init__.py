"""seq models (see the README)."""
__all__: list[str] = []
