"""glmx_workflows.core"""
