"""The KV store: key layout, the window store, the Redis / Valkey cluster client."""
