"""Bring your own model: Hugging Face checkpoints and model families in and out.

`families` (config.json <-> DecoderConfig per model_type), `weights` (the tensor name map and
transforms), `safetensors_io`, `importer` / `exporter` (`ul2flan import-hf` / `export-hf`),
`import_vocabulary` (the tokenizer's layout at import), `output_dir` (atomic, fingerprinted output
dirs), `tokenizer_files`. See docs/hf.md. The tokenizer as a vocabulary is `ul2flan.hf_vocab`.
"""
