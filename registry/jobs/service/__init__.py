"""The HTTP service: FastAPI app (app.py), bearer tokens (auth.py), request limits (limits.py),
error bodies (errors.py), routes for jobs and variants, and `qrecipe serve` (serve.py)."""
