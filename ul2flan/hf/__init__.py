"""Hugging Face models in and out: `importer.import_hf`, `exporter.export_hf` (docs/hf.md)."""
