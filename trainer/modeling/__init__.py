"""The TRACE model, importing nothing above it: model.py (TraceModel: Qwen2-VL backbone with the <|emb|> token),
checkpoint.py (the checkpoint folder, ModelConfig), interface.py (inputs, results, dict coercion, the Embedder
contract), processor.py, student.py (student prompts), tiny.py (the offline tiny build)."""
