"""One module per pattern. See ``stoic`` for the public names."""

__all__: list[str] = []
