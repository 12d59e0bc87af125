"""glmx_workflows.spec"""
