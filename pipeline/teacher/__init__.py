"""Teacher machinery, Beam-free (DESIGN.md): prompting (requests and keys), client (concurrency, rate limits,
retries, re-asks), limits, journal (exactly-once spend), cost, and reference_server (offline stand-in)."""
