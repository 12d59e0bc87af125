"""glmx_workflows.workflows"""
