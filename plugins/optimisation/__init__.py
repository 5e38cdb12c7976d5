"""Built-in topic plugin: optimisation."""
