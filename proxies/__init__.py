"""distilnas.proxies: cheap, faithful estimates of a candidate's quality."""
