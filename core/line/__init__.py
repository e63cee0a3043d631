"""Verdicts to the production line: the HTTP service, the watch folder, the shared results log, the export
bundle and its standalone runner."""
