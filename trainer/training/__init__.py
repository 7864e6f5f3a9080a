"""Training (`python -m trainer.train`): cli.py (flags, input checks) -> loop.py (the driver: set up, resume, steps,
finish) over run.py (a run set up), checkpoint.py (save, resume, resume checks), gradcache.py (one optimizer step:
forward_no_grad, build_cache, forward_backward), step.py, loss.py, data.py (rows and sampler), config.py (every
default), ranks.py (collectives), rng.py (seeding, generator state, RandContext)."""
