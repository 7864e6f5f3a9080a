"""The offline reference teacher: an OpenAI-compatible HTTP server that is an OFFLINE STAND-IN, NOT A MODEL.

state.py (its configuration and the state every route shares), answers.py (well-formed and broken answers,
made from the labelled lines of our prompts), server.py (chat completions and models, fault injection, the
server in a thread or as `python -m pipeline.teacher.reference.server`), batches.py (the Files and Batch API).
"""
