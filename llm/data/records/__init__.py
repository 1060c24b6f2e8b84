"""Supervised records: prompt / completion and chat records with their template and loss masks (sft.py), and the
generated fine-tuning tasks num2words, dates and fields (tasks.py)."""
