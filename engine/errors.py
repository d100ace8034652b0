"""User-facing errors. Each carries one sentence that names the field and the fix; the CLI
prints it on one line and exits non-zero (a traceback only when asked for)."""


class QRecipeError(Exception):
    """An error the user can fix: bad recipe, bad override, missing file, unsupported input."""

    exit_code = 2


class ConfigError(QRecipeError):
    """The composed configuration is invalid (unknown key, wrong type, missing file...)."""


class RecipeError(QRecipeError):
    """The recipe cannot be resolved against the model and target."""
