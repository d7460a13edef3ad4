"""The load suites (`make soak`): minutes long, so not part of `make test`."""
