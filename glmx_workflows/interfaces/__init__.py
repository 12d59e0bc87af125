"""glmx_workflows.interfaces"""
