"""Flan instruction tasks: the embedded demo (`demo_flan`, held-out `demo_heldout`).

Users' data is registered from gin through the library's entry points (`flan_export_mixture`,
`raw_instruction_mixture`, `register_tfds_task`, `register_hf_disk_task`): see docs/flan.md.
"""

from ul2flan.demo import tasks

tasks.register_demo_tasks()
