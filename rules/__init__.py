"""Pipelines and automation rules: schemas, YAML loading with positions, CEL, templates, dry-run engine."""
