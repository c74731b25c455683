"""The AI-feedback data engine: config, schemas, models, stages and the Ray Data pipeline."""
