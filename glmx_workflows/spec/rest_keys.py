"""Keys of a task entry read by resting-state connectivity (``"analysis": "connectivity"``), merged into
``keys.TASK_KEYS``.

Same shape as ``TASK_KEYS``: ``name: (JSON schema, default, description, example)``.
"""

REST_KEYS = {}
