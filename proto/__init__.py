"""Not the contract's code any more: see proto/embeddings_pb2.py (a shim, to be deleted).
The .proto sources are under proto/persona/v1/, their Python under clients/python/src."""
