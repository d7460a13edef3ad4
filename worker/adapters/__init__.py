"""The trainer's adapters: MLflow and DVC, which nothing but the trainer (and the operator's CLI) needs."""
