"""Declarative specs: entities, sources, features, metrics and validators. No Dagster here."""
