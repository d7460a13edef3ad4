"""Serving: every model's champion, answered from its ONNX bundle (no scikit-learn, pandas or MLflow)."""
