"""Import/export of other frameworks' checkpoints (optional extra `interop`)."""
