"""The `ul2flan` command line: one module per subcommand."""
