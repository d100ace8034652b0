"""qrecipe's engine: recipe schema, plan resolution, algorithms, quantized modules, evaluation, the run."""
