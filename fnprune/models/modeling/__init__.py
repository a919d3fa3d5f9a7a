"""Self-contained modeling code copied into pruned model directories (``trust_remote_code``)."""
