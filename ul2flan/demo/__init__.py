"""The embedded demo: a generated world, its corpus and instruction tasks, the demo vocabulary,
the demo evaluation and the pipeline report."""
