"""What the pipeline and the trainer share: the command-line error style, the error types, the Hub upload
machinery. Imports neither pipeline nor trainer."""
