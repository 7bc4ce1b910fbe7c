"""`ul2flan pipeline`: base -> UL2R -> Flan (+ Flan from base) -> evaluation -> report.

`settings` (the gin-bound `run_pipeline.*`, `evaluation_settings.*`, `hf_import_settings.*`,
`hf_export_settings.*`), `stages` (the plan and one stage's run), `preflight` (every stage and
evaluator checked before the first step), `evaluators` (the registry; `benchmark_eval` and
`text_infilling` are built in, the demo registers its own), `claims` (verdicts over seeds),
`report` (report.md, report.json, plots), `runner` (`run_pipeline`).
"""
