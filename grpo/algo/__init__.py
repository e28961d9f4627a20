"""The algorithm's math as pure tensor functions: advantages (advantages.py) and the per-token
loss, KL estimators and aggregation (losses.py), with the registries of advantage estimators and
policy losses. Imports torch only: no model, tokenizer, file or other part of the package."""
