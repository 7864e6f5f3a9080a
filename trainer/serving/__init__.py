"""Serving TRACE: an OpenAI-compatible /v1/embeddings endpoint (`python -m trainer.serve`).

    protocol.py   the request and response in the OpenAI shape, limits, errors (no HTTP, no model)
    images.py     an image from a request: data URL or base64, checked before it is decoded
    queue.py      the request queue that feeds the engine's one loop, and the scheduler thread that owns the model
    worker.py     the model's process: loads the model, runs the scheduler, answers the front over a pipe
    remote.py     the front's side of it (ModelProcess: the scheduler's interface, the model in a spawned child)
    app.py        the aiohttp application: routes, API key, error bodies, graceful shutdown
    cli.py        the command line: the HTTP front in this process, the model in a process of its own

Only app.py and cli.py import aiohttp (the `serve` extra); the rest needs what the trainer needs.
"""
