"""Quality measurements of a model against its baseline on the same tokens.

The package imports nothing itself, so light modules (lm_eval_names.py, read by the
registry's gates) load without torch; import the measurements from their modules, e.g.
`from qrecipe.engine.evaluate.perplexity import perplexity`."""
