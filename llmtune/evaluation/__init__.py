"""`llmtune eval` tasks: each module scores one model on one kind of data and returns plain numbers."""
