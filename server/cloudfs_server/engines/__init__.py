"""Storage engines: the metadata and block store interfaces and their implementations."""
