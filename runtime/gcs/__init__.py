"""The Global Control Store process (head node only)."""
