"""DPO / DDPO training on the engine's pair shards: losses (pure functions), the pair loader,
the Ray Train + DeepSpeed loop and the Hugging Face export. Entry point: train.trainer.train_dpo."""
