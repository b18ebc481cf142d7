"""Dagster and DVC front ends over the stage registry in `stages.registry`."""
