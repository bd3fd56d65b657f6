"""schemathesis hooks for test_schemathesis.py (loaded via SCHEMATHESIS_HOOKS): a pack body
(application/x-cloudfs-pack) is raw bytes, serialised as schemathesis sends octet-stream."""

import schemathesis

schemathesis.serializer.alias("application/x-cloudfs-pack", "application/octet-stream")
