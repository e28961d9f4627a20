"""Several processes: data parallelism on torch.distributed (world.py) and FSDP2 sharding of the
decoder layers (fsdp.py). With one process every collective is the identity."""
