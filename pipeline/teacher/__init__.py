"""Teacher machinery, Beam-free (DESIGN.md): config (settings, the API key), prompting (requests and keys),
transport (HTTP), outputs (results and their checks), client (concurrency, rate limits, retries, re-asks) and
process (the client in a child process) behind protocol.Teacher, registry (one of each per process), limits,
journal (exactly-once spend), budget, cost, batch and pending (Batch API), and reference/ (offline stand-in)."""
