"""Built-in topic plugin: attribution."""
