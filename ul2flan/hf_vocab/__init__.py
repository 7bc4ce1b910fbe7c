"""A Hugging Face tokenizer as a seqio vocabulary (below `ul2flan.vocabularies`, above the model).

`vocabulary` (a seqio vocabulary over `tokenizer.json`), `token_layout` (which ids are padding,
sentinels and new rows, and how an embedding matrix maps between the tokenizer's ids and the
model's), `chat_template` (a tokenizer's chat template rendered as transformers renders it).
See docs/hf_tokenizer.md. Checkpoints in and out live in `ul2flan.hf`, which imports this.
"""
