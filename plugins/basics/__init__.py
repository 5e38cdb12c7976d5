"""Built-in topic plugin: basics."""
