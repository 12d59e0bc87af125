"""glmx_workflows.cli"""
