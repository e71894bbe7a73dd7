"""The raylet process: a node's scheduler, worker pool and object store."""
