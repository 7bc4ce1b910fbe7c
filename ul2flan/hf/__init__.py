"""Bring your own model: Hugging Face tokenizers, checkpoints and model families.

`tokenizer` (a seqio vocabulary over `tokenizer.json`), `token_layout` (which ids are padding,
sentinels and new rows, and how an embedding matrix maps between the tokenizer's ids and the
model's), `chat_template` (a tokenizer's chat template rendered as transformers renders it).
See docs/hf_tokenizer.md (tokenizer, sentinels, chat templates).

`families` (config.json <-> DecoderConfig per model_type), `weights` (the tensor name map and
transforms), `safetensors_io`, `importer` / `exporter` (`ul2flan import-hf` / `export-hf`),
`output_dir` (atomic, fingerprinted output dirs), `tokenizer_files`. See docs/hf.md.
"""
