"""Beam-free M-BEIR access. layout (names, paths), records (dataclasses), reasons (reject codes),
lines + parse (JSONL -> QueryRecord/CandidateRecord/Reject), instructions, qrels, images, read (whole files
over FileSystems), source (--mbeir_root resolution and file selection), errors (ConfigError).
Only images/read/source touch Beam, and only for FileSystems."""
