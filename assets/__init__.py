"""Dagster assets built from the stage registry: one asset per DVC stage, same key, same command."""
