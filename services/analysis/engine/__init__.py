"""The analysis engine: fetch a repository, analyse it, report results."""
