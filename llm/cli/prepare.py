"""`llm prepare SOURCE... --out DIR`: tokenize text, JSONL and Parquet sources into a prepared dataset
(llm/data/corpora/prepare.py) that `--config.data.corpus=DIR` trains on."""

from __future__ import annotations

from llm.cli.parsing import Parser


def main(argv: list[str]) -> int:
    from llm.data.corpora.prepare import PrepareSettings

    d = PrepareSettings(sources=[], out="")
    p = Parser(prog="llm prepare", description="Tokenize sources (text files, directories, globs, .gz / .zst, "
                                               "JSONL, Parquet) into token shards with a manifest; run again to "
                                               "finish an interrupted preparation.")
    p.add_argument("sources", nargs="+", help="files, directories or glob patterns")
    p.add_argument("--out", required=True, help="the dataset directory to write")
    p.add_argument("--tokenizer", default=d.tokenizer, help="byte, char or bpe (trained on a sample of the "
                                                            "sources), or a tokenizer.json file")
    p.add_argument("--vocab_size", type=int, default=d.vocab_size, help="BPE vocabulary size")
    p.add_argument("--text_field", default=d.text_field, help="the JSONL field / Parquet column holding text")
    p.add_argument("--val_fraction", type=float, default=d.val_fraction, help="documents held out for validation")
    p.add_argument("--unit_chars", type=int, default=d.unit_chars, help="characters per shard (memory bound)")
    p.add_argument("--sample_chars", type=int, default=d.sample_chars,
                   help="characters the tokenizer trains on")
    p.add_argument("--workers", type=int, default=d.workers, help="tokenizing processes (0: one per core)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    a = p.parse(argv)
    if a is None:
        return 0
    from llm.data.corpora.prepare import prepare

    prepare(PrepareSettings(sources=a.sources, out=a.out, tokenizer=a.tokenizer, vocab_size=a.vocab_size,
                            text_field=a.text_field, val_fraction=a.val_fraction, unit_chars=a.unit_chars,
                            sample_chars=a.sample_chars, workers=a.workers), progress=not a.no_progress)
    return 0
