"""Pipeline definitions (compiled YAML is what the Kubeflow UI uploads) and their local runner."""
