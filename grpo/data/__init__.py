"""Where prompts come from: built-in tasks and reasoning-gym (tasks.py), your own datasets
(readers.py, datasets.py), the verifiers tasks bring (verifiers.py), and turning a prompt into the
model's input ids (prompts.py)."""
