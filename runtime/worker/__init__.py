"""The worker process: runs tasks pushed by their owners."""
