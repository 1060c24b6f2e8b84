"""Running text: named and file corpora and their nanoGPT split (corpus.py), `llm prepare`'s sources, token
shards and their reader (sources.py, prepare.py, prepared.py), and the stateless,
resumable batches of a token stream (batches.py, shuffle.py)."""
