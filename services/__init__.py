"""Persona's running parts: ingest, refresh, serving, and what they share."""
