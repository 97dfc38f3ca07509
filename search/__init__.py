"""distilnas.search: the top floor. Strategies, orchestration, the run config and the command line."""
