"""The device registry (issue 5): routes, the in-memory registry, the persistent device list."""
