"""The production stages a variant can be promoted to (a light module: the command line reads it
without loading the database layer)."""

STAGES = ("production", "staging")
