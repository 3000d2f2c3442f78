"""Settings modules: ``production`` (the default, files on disk), ``dev`` (``--dev``), ``test``."""
