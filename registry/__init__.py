"""The SQL registry of variants, MLflow tracking, promotion and jobs."""
