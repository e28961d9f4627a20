"""The models a step runs: loading (loading.py), LoRA (lora.py), the reference policy
(reference.py) and per-token log-probs under any of them (logprobs.py)."""
