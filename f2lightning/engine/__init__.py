"""The data engine of paper §4-5: filters for generated annotations and dataset statistics."""
