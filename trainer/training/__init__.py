"""Training: config, M-BEIR-CoT data and sampler, the joint loss, the gradient cache, the loop (`python -m trainer.train`)."""
