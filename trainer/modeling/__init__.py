"""The TRACE model: Qwen2-VL backbone, <|emb|> token, processor, student prompts, tiny builds."""
