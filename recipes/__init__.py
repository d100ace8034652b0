"""Named recipes: the Hydra config group `recipe` (registered by qrecipe.engine.config)."""
