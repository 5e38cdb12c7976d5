"""convlens built-in topics, each a plugin registered through the ``convlens`` entry-point group."""
