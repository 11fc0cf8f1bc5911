"""Built-in classifiers, one module per library.

``stdlib`` is installed by ``import stoic`` (through ``stoic.outcome.install_defaults``). The
others are imported by ``stoic.outcome`` the first time an exception from their library is
classified, so stoic never imports a library the application does not use.
"""

__all__: list[str] = []
