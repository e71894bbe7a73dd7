"""Owner-side runtime shared by drivers and workers."""
