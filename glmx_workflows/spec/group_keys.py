"""Keys of a task entry read by the group level (merged into ``keys.TASK_KEYS``).

Same shape as ``TASK_KEYS``: ``name: (JSON schema, default, description, example)``.
"""

GROUP_KEYS = {}
